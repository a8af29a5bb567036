//! The layering of ARCHITECTURE.md, enforced: every module of the library imports only
//! from its own layer or those below it, and no modules import each other in a circle.
//!
//! An import is any `crate::` path outside a test module, in a `use` or inline. A new
//! module must be given its layer here, in the same change that adds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module's layer, lowest first. A module path names a file under `src/`; `a::b`
/// is `src/a/b.rs`, and `a` is `src/a.rs` or `src/a/mod.rs`.
const LAYERS: &[(&str, &[&str])] = &[
    ("values", &["message", "names", "protocol", "units"]),
    ("contracts", &["action", "broker", "store"]),
    (
        "runtime utilities",
        &[
            "dashboard",
            "faults",
            "iowait",
            "logging",
            "metrics",
            "rails",
        ],
    ),
    (
        "supervision policy",
        &["supervision::policy", "supervision::strategy"],
    ),
    (
        "supervision runtime",
        &[
            "supervision",
            "supervision::child",
            "supervision::tree",
            "supervision::supervisor",
            "report",
        ],
    ),
    (
        "adapters",
        &[
            "action::command",
            "action::webhook",
            "action::simulated",
            "broker::jetstream",
            "broker::pubsub",
            "broker::remote",
            "broker::memory",
            "store::memory",
            "store::sqlite",
            "store::postgres",
        ],
    ),
    (
        "actors",
        &[
            "actors",
            "actors::protocol",
            "actors::acker",
            "actors::saver",
            "actors::restarter",
            "actors::consumer",
            "actors::publisher",
            "actors::monitor",
            "actors::signal",
            "source",
        ],
    ),
    (
        "wiring",
        &["app", "config", "cli", "history", "publish", "fuzzing"],
    ),
];

/// Modules that only tests compile.
const TEST_ONLY: &[&str] = &["testkit"];

fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" => None,
        _ => Some(parts.join("::")),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text that counts: test modules, which sit at the bottom of a file, and comments
/// are cut.
fn code_of(text: &str) -> String {
    let mut cut = text.len();
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        let rest = rest.strip_prefix("pub ").unwrap_or(rest);
        if rest.starts_with("mod ") {
            cut = at;
            break;
        }
        from = at + 1;
    }
    text[..cut]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d` and `a::c::e`.
fn expand(prefix: &str, group: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(ch);
    }
    items.push(item);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.find('{') {
            Some(i) => {
                let inner = &item[i + 1..item.rfind('}').expect("a closed group")];
                expand(&format!("{prefix}{}", &item[..i]), inner, out);
            }
            None => out.push(format!("{prefix}{item}")),
        }
    }
}

/// Every `crate::` path in `code`, groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let mut depth = 0;
        let mut end = 0;
        for (j, ch) in rest.char_indices() {
            let ok = match ch {
                '{' => {
                    depth += 1;
                    true
                }
                '}' if depth > 0 => {
                    depth -= 1;
                    true
                }
                c if c.is_alphanumeric() || c == '_' || c == ':' || c == '*' => true,
                ',' | ' ' | '\n' | '\t' if depth > 0 => true,
                _ => false,
            };
            if !ok {
                break;
            }
            end = j + ch.len_utf8();
            if depth == 0 && ch == '}' {
                break;
            }
        }
        expand("", &rest[..end], &mut out);
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn target(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

#[test]
fn every_module_imports_only_its_own_layer_or_lower_and_none_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, (usize, &str)> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (layer, mods))| mods.iter().map(move |m| (*m, (i, *layer))))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    let mut code = BTreeMap::new();
    for file in &files {
        if let Some(m) = module_of(&src, file) {
            modules.insert(m.clone());
            let text = std::fs::read_to_string(file).expect("read a source file");
            code.insert(m, code_of(&text));
        }
    }
    let mut problems = Vec::new();
    for m in &modules {
        if TEST_ONLY.contains(&m.as_str()) {
            continue;
        }
        let Some(&(mine, my_layer)) = rank.get(m.as_str()) else {
            problems.push(format!("{m} has no layer; give it one in this test"));
            continue;
        };
        for path in crate_paths(&code[m]) {
            let Some(t) = target(&path, &modules) else {
                continue;
            };
            if &t == m {
                continue;
            }
            edges.entry(m.clone()).or_default().insert(t.clone());
            if let Some(&(theirs, their_layer)) = rank.get(t.as_str()) {
                if theirs > mine {
                    problems.push(format!(
                        "{m} ({my_layer}) imports {path} from {t} ({their_layer}), a higher layer"
                    ));
                }
            }
        }
    }
    for circle in circles(&edges) {
        problems.push(format!("modules import each other in a circle: {circle:?}"));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_checker_sees_grouped_inline_and_nested_imports() {
    let code = "use crate::a::{b, c::{d, e}};\nlet x = crate::f::g(1);\n// crate::h\n";
    let paths = crate_paths(&code_of(code));
    assert_eq!(
        paths,
        ["a::b", "a::c::d", "a::c::e", "f::g"].map(String::from)
    );
    let edges = BTreeMap::from([
        ("x".to_string(), BTreeSet::from(["y".to_string()])),
        ("y".to_string(), BTreeSet::from(["x".to_string()])),
    ]);
    assert_eq!(circles(&edges).len(), 1);
}
