//! Scenario 6, the fleet: three instances on one JetStream consumer and one PostgreSQL
//! schema, one of them SIGKILLed at a seeded moment, the other two draining the rest.
//!
//! Each run has a stream and a schema of its own, removed after it. Before the instances
//! start, the schema is made (as the service makes it) and given triggers that log, in
//! the writers' own transactions, each row a save inserted and by which instance, and
//! each claim on a host that was won or given back. What a killed writer never
//! committed leaves no line, so the logs are what the database kept, not what was tried.
//!
//! The rules checked, read from the code:
//! - Saved exactly once: an ack follows a committed save, so every published id that was
//!   not dead-lettered has its row; a dead-lettered one may lack it, when the delivery
//!   that saved it died uncommitted and the next came back past its last allowed
//!   delivery, to be dead-lettered on sight. No row has an id that was not published.
//!   The primary key keeps one row an id, so the count that can go wrong is the one the
//!   reports give: each survivor's `saved` must equal the rows its connections inserted.
//! - Acked or dead-lettered: the stream is a work queue, so what is left in it after the
//!   survivors exit was neither; with nothing pending or unacked at the consumer either,
//!   lost is what is left.
//! - No host restarted twice within the interval: the guard keeps a host's claim, taken
//!   before its action starts, as its last restart, unless the restart failed or never
//!   started and the claim was given back. The claims kept, across every instance,
//!   must lie at least the interval apart for each host, by the one clock of the
//!   machine the instances share.
//! - Each claim kept is one restart in the history: an attempt restarted, timed out or
//!   `unknown` (the killed instance's, replaced after its ttl), or a claim still open.
//! - The survivors exit 0 with balanced reports: each delivery a survivor took was
//!   acked, nacked or given back at shutdown, and nothing was left at the consumer at
//!   its exit. (The report's own law, published = acked + dead-lettered + pending at
//!   exit, holds only for an instance alone on its consumer, as the report says.)
//!
//! The kill comes once the fleet has saved a seeded share of the messages, so that it
//! lands mid-run however fast the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::util::{binary, exit_within, last_report, median, started, Options, Section};

/// How long a survivor may take to drain and exit before it counts as hung.
const EXIT_LIMIT: Duration = Duration::from_secs(90);

/// The minimum interval between two restarts of a host: short beside a run, so that
/// hosts are restarted again within it and the guard decides at its edge.
const INTERVAL_MS: i64 = 1000;

/// The instances of a run; the first is the one killed.
const INSTANCES: usize = 3;

/// The shape of a run: how many messages, naming how many hosts, and how many each
/// instance holds at once.
struct Shape {
    messages: usize,
    hosts: u64,
    in_flight: u32,
}

/// The share of the messages the fleet has saved when the kill comes, drawn per run:
/// a moment read from the fleet's progress rather than the clock lands mid-run on a
/// fast machine and a slow one alike.
const KILL_AT: std::ops::Range<f64> = 0.05..0.8;

/// Runs the scenario: 20 runs of a few thousand messages, or 2 of a few hundred.
pub fn run(o: &Options) -> Section {
    let (runs, shape) = if o.quick {
        (
            2,
            Shape {
                messages: 400,
                hosts: 20,
                in_flight: 10,
            },
        )
    } else {
        (
            20,
            Shape {
                messages: 3000,
                hosts: 60,
                in_flight: 20,
            },
        )
    };
    eprintln!(
        "6. the fleet: {runs} runs of {INSTANCES} instances on {} messages, one SIGKILLed",
        shape.messages
    );
    let nats = std::env::var("MANDRILL_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let pg = std::env::var("MANDRILL_TEST_PG_URL")
        .unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
    let mut out = Section::default();
    if let Err(e) = reachable(&nats, &pg) {
        // Under CI a scenario that never ran would pass unseen, so there it fails.
        if std::env::var("CI").as_deref() == Ok("true") {
            out.failures
                .push(format!("fleet: {e}; under CI=true it must run"));
        } else {
            eprintln!("\n*** SKIPPED: 6. the fleet: {e} ***\n");
        }
        out.row("6. the fleet", "skipped", e);
        return out;
    }
    let f: Vec<FleetRun> = (0..runs)
        .map(|i| fleet_run(o.seed + 60_000 + i as u64, &shape, &nats, &pg, &o.scratch))
        .collect();
    for x in &f {
        if !x.held() {
            out.failures
                .push(format!("fleet run, seed {}: {x:?}", x.seed));
        }
    }
    let sum = |g: &dyn Fn(&FleetRun) -> u64| f.iter().map(g).sum::<u64>();
    let count = |g: &dyn Fn(&FleetRun) -> bool| f.iter().filter(|x| g(x)).count();
    let name = "6. the fleet";
    out.row(
        name,
        &format!(
            "runs: {INSTANCES} instances, {} messages on {} hosts, one SIGKILLed",
            shape.messages, shape.hosts
        ),
        f.len(),
    );
    out.row(
        name,
        "saved exactly once: runs ok; ids missing, not dead-lettered; rows not published; survivors' `saved` off from the rows they inserted",
        format!(
            "{}/{}; {}; {}; {}",
            count(&|x| x.saved_once()),
            f.len(),
            sum(&|x| x.missing),
            sum(&|x| x.extra),
            sum(&|x| x.saved_off)
        ),
    );
    out.row(
        name,
        "acked or dead-lettered: runs ok; dead-lettered; lost (left in the stream or at the consumer)",
        format!(
            "{}/{}; {}; {}{}",
            count(&|x| x.lost == Some(0)),
            f.len(),
            sum(&|x| x.dead_lettered),
            sum(&|x| x.lost.unwrap_or(0)),
            match count(&|x| x.lost.is_none()) {
                0 => String::new(),
                n => format!(" ({n} runs whose broker could not be read)"),
            }
        ),
    );
    out.row(
        name,
        &format!(
            "hosts restarted twice within the interval ({INTERVAL_MS} ms, claims kept across the fleet); restarts in all (claims given back besides); hosts restarted again past it; closest two restarts of a host, ms"
        ),
        format!(
            "{}; {} ({}); {}; {}",
            sum(&|x| x.twice_within),
            sum(&|x| x.claims_kept),
            sum(&|x| x.claims_given_back),
            sum(&|x| x.restarted_again),
            f.iter()
                .filter_map(|x| x.closest_ms)
                .min()
                .map_or("none".into(), |c| c.to_string())
        ),
    );
    out.row(
        name,
        "restarts in the history off from the claims kept (restarted, timed out, unknown, or still open)",
        sum(&|x| x.history_off),
    );
    out.row(
        name,
        "survivors exiting 0 with balanced reports; rows the killed one saved; deliveries redelivered to the survivors",
        format!(
            "{}/{}; {}; {}",
            count(&|x| x.survivors_ok()),
            f.len(),
            sum(&|x| x.killed_inserted),
            sum(&|x| x.survivors_redelivered)
        ),
    );
    let killed: Vec<u64> = f.iter().map(|x| x.killed_at_ms).collect();
    out.row(
        name,
        &format!(
            "killed at, ms after start: min, max (once the fleet had saved a share of the messages drawn from {:.0}% to {:.0}%)",
            KILL_AT.start * 100.0,
            KILL_AT.end * 100.0
        ),
        format!(
            "{}, {}",
            killed.iter().min().unwrap_or(&0),
            killed.iter().max().unwrap_or(&0)
        ),
    );
    let took: Vec<f64> = f.iter().map(|x| x.run_ms).collect();
    out.row(
        name,
        "run, start to the last survivor's exit, ms: p50, max",
        format!(
            "{:.0}, {:.0}",
            median(&took),
            took.iter().copied().fold(0.0, f64::max)
        ),
    );
    out.runs("fleet", &f);
    out
}

/// One run of the fleet: what was done to it, and what came of it.
#[derive(Debug, Default, Serialize)]
struct FleetRun {
    seed: u64,
    /// The rows saved by the fleet at which the kill was due, and when it came.
    kill_at_saved: i64,
    killed_at_ms: u64,
    /// Rows the killed instance's committed saves inserted.
    killed_inserted: u64,
    /// Published ids without a row that were not dead-lettered.
    missing: u64,
    /// Rows whose id was never published.
    extra: u64,
    /// Each survivor's reported `saved`, when it printed a report.
    survivor_saved: Vec<Option<u64>>,
    /// How far each survivor's reported `saved` is from the rows it inserted, summed.
    saved_off: u64,
    dead_lettered: u64,
    /// What is left in the stream, pending or unacked at the consumer; `None` when the
    /// broker could not be read.
    lost: Option<u64>,
    /// Pairs of kept claims on one host closer than the interval.
    twice_within: u64,
    /// Hosts whose claims were kept more than once.
    restarted_again: u64,
    /// Claims kept across the fleet: the restarts that happened, or may have.
    claims_kept: u64,
    /// How far the restarts in the history are from the claims kept.
    history_off: u64,
    /// Claims given back, their restarts failed or never started.
    claims_given_back: u64,
    /// The closest two kept claims on one host came, in ms.
    closest_ms: Option<i64>,
    /// Deliveries beyond the first that the survivors took: the killed one's leases
    /// that ran out among them.
    survivors_redelivered: u64,
    survivor_exits: Vec<Option<i32>>,
    survivors_balanced: usize,
    hung: bool,
    run_ms: f64,
    /// Why the run could not be checked, when it could not.
    error: Option<String>,
}

impl FleetRun {
    fn saved_once(&self) -> bool {
        self.error.is_none() && self.missing == 0 && self.extra == 0 && self.saved_off == 0
    }

    fn survivors_ok(&self) -> bool {
        !self.hung
            && self.survivor_exits.iter().all(|c| *c == Some(0))
            && self.survivors_balanced == INSTANCES - 1
    }

    fn held(&self) -> bool {
        self.saved_once()
            && self.lost == Some(0)
            && self.twice_within == 0
            && self.history_off == 0
            && self.survivors_ok()
    }
}

/// Triggers that log, in the writers' own transactions, each row a save inserts with
/// the instance whose connection inserted it, and each claim won or given back. `{s}`
/// is the schema.
const LOGS: &str = "
CREATE TABLE {s}.torture_saves (message_id uuid NOT NULL, saved_by text NOT NULL);
CREATE TABLE {s}.torture_claims (host text NOT NULL, at bigint NOT NULL, won boolean NOT NULL);
CREATE FUNCTION {s}.log_save() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.torture_saves VALUES (NEW.message_id, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER log_save AFTER INSERT ON {s}.messages
    FOR EACH ROW EXECUTE FUNCTION {s}.log_save();
CREATE FUNCTION {s}.log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A claim moves a host's time forward; giving one back moves it to the claim
    -- before, or deletes the host's row when there was none.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {s}.torture_claims VALUES (NEW.host, NEW.claimed_at, true);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {s}.torture_claims VALUES (OLD.host, OLD.claimed_at, false);
    ELSIF NEW.claimed_at > OLD.claimed_at THEN
        INSERT INTO {s}.torture_claims VALUES (NEW.host, NEW.claimed_at, true);
    ELSIF NEW.claimed_at < OLD.claimed_at THEN
        INSERT INTO {s}.torture_claims VALUES (OLD.host, OLD.claimed_at, false);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER log_claim AFTER INSERT OR UPDATE OR DELETE ON {s}.claims
    FOR EACH ROW EXECUTE FUNCTION {s}.log_claim();
";

/// A schema of the run's own, made as the service makes it, with the logs; dropped when
/// this is.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn new(base: &str) -> Result<Self, String> {
        let name = format!("torture_{}", Uuid::new_v4().simple());
        let mut admin = Client::connect(base, NoTls).map_err(|e| format!("postgres: {e}"))?;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .map_err(|e| format!("create schema: {e}"))?;
        let schema = Self {
            base: base.to_string(),
            name,
        };
        let config: postgres::Config = schema.url("torture").parse().map_err(|e| format!("{e}"))?;
        mandrill::store::postgres::PostgresStore::open(&config)
            .map_err(|e| format!("make the service's schema: {e}"))?;
        admin
            .batch_execute(&LOGS.replace("{s}", &schema.name))
            .map_err(|e| format!("add the logs: {e}"))?;
        Ok(schema)
    }

    /// The URL an instance takes: the schema first on its search path, and the
    /// instance's name as the connection's, which the save log records.
    fn url(&self, instance: &str) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-csearch_path%3D{}&application_name={instance}",
            self.base, self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.base, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

/// Whether both servers answer, or what is wrong.
fn reachable(nats: &str, pg: &str) -> Result<(), String> {
    Client::connect(pg, NoTls).map_err(|e| format!("cannot reach postgres at {pg}: {e}"))?;
    runtime().block_on(async {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(nats)
            .await
            .map(drop)
            .map_err(|e| format!("cannot reach nats at {nats}: {e}"))
    })
}

/// The instance names of a run; the first is killed.
fn instance(i: usize) -> String {
    format!("fleet-{i}")
}

fn fleet_run(seed: u64, shape: &Shape, nats: &str, pg: &str, dir: &Path) -> FleetRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut x = FleetRun {
        seed,
        kill_at_saved: (rng.random_range(KILL_AT) * shape.messages as f64) as i64,
        ..FleetRun::default()
    };
    // Ids and hosts come from the seed, so that a replay publishes the same messages.
    let published: Vec<(Uuid, String)> = (0..shape.messages)
        .map(|_| {
            let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
            (id, format!("web-{:03}", rng.random_range(0..shape.hosts)))
        })
        .collect();
    let schema = match Schema::new(pg) {
        Ok(s) => s,
        Err(e) => {
            x.error = Some(e);
            return x;
        }
    };
    let stream = format!("TORTURE_FLEET_{}", Uuid::new_v4().simple());
    let result = drive(&mut x, shape, &published, &schema, nats, &stream, dir);
    delete_stream(nats, &stream);
    if let Err(e) = result {
        x.error = Some(e);
    }
    x
}

/// Publishes, runs the fleet, kills one, waits for the others, and checks.
fn drive(
    x: &mut FleetRun,
    shape: &Shape,
    published: &[(Uuid, String)],
    schema: &Schema,
    nats: &str,
    stream: &str,
    dir: &Path,
) -> Result<(), String> {
    let input = dir.join(format!("fleet-{}.ndjson", x.seed));
    let lines: String = published
        .iter()
        .map(|(id, host)| {
            serde_json::json!({ "message_id": id, "instance_name": host }).to_string() + "\n"
        })
        .collect();
    std::fs::write(&input, lines).map_err(|e| format!("write the input: {e}"))?;
    let out = Command::new(binary())
        .args([
            "publish",
            "--to",
            "jetstream",
            "--create",
            "--nats-url",
            nats,
        ])
        .args(["--stream", stream, "--input"])
        .arg(&input)
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run mandrill publish: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let start = Instant::now();
    let mut fleet: Vec<Child> = Vec::with_capacity(INSTANCES);
    for i in 0..INSTANCES {
        let seed = x.seed + i as u64;
        match spawn(&instance(i), shape, schema, nats, stream, dir, seed) {
            Ok(child) => fleet.push(child),
            Err(e) => {
                for mut child in fleet {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e);
            }
        }
    }
    started(fleet[0].id(), Duration::from_secs(5));
    wait_for_rows(schema, x.kill_at_saved);
    let _ = fleet[0].kill();
    x.killed_at_ms = start.elapsed().as_millis() as u64;
    let _ = fleet[0].wait();
    for child in &mut fleet[1..] {
        let (status, hung) = exit_within(child, EXIT_LIMIT);
        x.hung |= hung;
        x.survivor_exits.push(status.and_then(|s| s.code()));
        let mut stdout = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_end(&mut stdout);
        }
        let report = last_report(&stdout);
        x.survivors_balanced += usize::from(report.as_ref().is_some_and(balanced));
        x.survivors_redelivered += report
            .as_ref()
            .and_then(|r| r["redelivered"].as_u64())
            .unwrap_or(0);
        x.survivor_saved
            .push(report.as_ref().and_then(|r| r["saved"].as_u64()));
    }
    x.run_ms = start.elapsed().as_secs_f64() * 1000.0;
    let dead: HashSet<Uuid> = check_broker(x, nats, stream)?;
    check_store(x, published, &dead, schema)
}

/// Waits until the fleet has saved `n` messages, for at most a minute: past that the
/// kill comes all the same, and the run shows when.
fn wait_for_rows(schema: &Schema, n: i64) {
    let Ok(mut c) = Client::connect(&schema.url("torture"), NoTls) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match c.query_one("SELECT count(*) FROM messages", &[]) {
            Ok(r) if r.get::<_, i64>(0) < n => std::thread::sleep(Duration::from_millis(5)),
            _ => return,
        }
    }
}

/// A fleet member's own balance. `published` is the consumer's backlog when it
/// connected, which the others drain too, so `conserved` holds only for an instance
/// alone on its consumer. What holds for each: every delivery it took was acked,
/// nacked or given back at shutdown, and at its exit nothing was left at the consumer.
fn balanced(r: &serde_json::Value) -> bool {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    n("consumed") == n("acked") + n("nacked") + n("nacked_on_shutdown") && n("pending_at_exit") == 0
}

/// Starts one instance of the fleet.
fn spawn(
    name: &str,
    shape: &Shape,
    schema: &Schema,
    nats: &str,
    stream: &str,
    dir: &Path,
    seed: u64,
) -> Result<Child, String> {
    Command::new(binary())
        .args(["--source", "jetstream", "--create", "--nats-url", nats])
        .args(["--stream", stream, "--consumer", "fleet"])
        .args(["--store", "postgres", "--db-url", &schema.url(name)])
        .args(["--instance-id", name, "--seed", &seed.to_string()])
        .args(["--max-in-flight", &shape.in_flight.to_string()])
        .args([
            "--min-restart-interval",
            &(INTERVAL_MS as f64 / 1000.0).to_string(),
            "--claim-ttl",
            "2",
            "--ack-deadline",
            "1",
            "--idle-exit",
            "4",
            "--io-delay",
            "0.1",
            "--failure-rate",
            "0.3",
            "--max-deliveries",
            "3",
            "--log",
            "none",
        ])
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("run mandrill: {e}"))
}

/// Reads what the broker kept: what is left in the stream and at the consumer, and the
/// ids of the dead letters.
fn check_broker(x: &mut FleetRun, nats: &str, stream: &str) -> Result<HashSet<Uuid>, String> {
    runtime().block_on(async {
        let client = async_nats::connect(nats)
            .await
            .map_err(|e| format!("nats: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let mut s = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream: {e}"))?;
        let left = s
            .info()
            .await
            .map_err(|e| format!("stream info: {e}"))?
            .state
            .messages;
        let mut c: async_nats::jetstream::consumer::PullConsumer = s
            .get_consumer("fleet")
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let info = c.info().await.map_err(|e| format!("consumer info: {e}"))?;
        x.lost = Some(left + info.num_pending + info.num_ack_pending as u64);
        let dlq = js
            .get_stream(format!("{stream}_DLQ"))
            .await
            .map_err(|e| format!("dead letters: {e}"))?;
        let last = dlq.cached_info().state.last_sequence;
        let mut dead = HashSet::new();
        for seq in 1..=last {
            let m = dlq
                .get_raw_message(seq)
                .await
                .map_err(|e| format!("dead letter {seq}: {e}"))?;
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if let Some(id) = v["message_id"].as_str().and_then(|s| s.parse().ok()) {
                dead.insert(id);
            }
        }
        x.dead_lettered = dead.len() as u64;
        Ok(dead)
    })
}

/// Reads what the database kept: the rows against the ids published and dead-lettered,
/// the rows each instance inserted against its report, and the claims kept per host.
fn check_store(
    x: &mut FleetRun,
    published: &[(Uuid, String)],
    dead: &HashSet<Uuid>,
    schema: &Schema,
) -> Result<(), String> {
    let mut c = Client::connect(&schema.url("torture"), NoTls).map_err(|e| format!("{e}"))?;
    let q = |c: &mut Client, sql: &str| c.query(sql, &[]).map_err(|e| format!("{sql}: {e}"));
    let rows: HashSet<Uuid> = q(&mut c, "SELECT message_id FROM messages")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids: HashSet<Uuid> = published.iter().map(|(id, _)| *id).collect();
    x.missing = ids
        .iter()
        .filter(|id| !rows.contains(id) && !dead.contains(id))
        .count() as u64;
    x.extra = rows.difference(&ids).count() as u64;
    let inserted: HashMap<String, i64> = q(
        &mut c,
        "SELECT saved_by, count(*) FROM torture_saves GROUP BY saved_by",
    )?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let by = |i: usize| inserted.get(&instance(i)).copied().unwrap_or(0) as u64;
    x.killed_inserted = by(0);
    // A survivor without a report is off by every row it inserted.
    x.saved_off = (1..INSTANCES)
        .zip(&x.survivor_saved)
        .map(|(i, saved)| saved.unwrap_or(0).abs_diff(by(i)))
        .sum();
    // Every claim won, then every one given back: the claims kept are the difference,
    // whatever order the log's rows lie in.
    let mut kept: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in q(
        &mut c,
        "SELECT host, at, won FROM torture_claims ORDER BY won DESC",
    )? {
        let (host, at, won): (String, i64, bool) = (r.get(0), r.get(1), r.get(2));
        let times = kept.entry(host).or_default();
        if won {
            times.push(at);
        } else if let Some(i) = times.iter().position(|t| *t == at) {
            times.swap_remove(i);
            x.claims_given_back += 1;
        }
    }
    for times in kept.values_mut() {
        times.sort_unstable();
        x.twice_within += times
            .windows(2)
            .filter(|w| w[1] - w[0] < INTERVAL_MS)
            .count() as u64;
        x.restarted_again += u64::from(times.len() > 1);
        x.claims_kept += times.len() as u64;
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            x.closest_ms = Some(x.closest_ms.map_or(gap, |c| c.min(gap)));
        }
    }
    // Each claim kept is one restart in the history: restarted, timed out, or left
    // without an outcome by the killed instance, still open or written as `unknown`
    // when a later claim took its place.
    let history: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM attempts
                     WHERE outcome IN ('restarted', 'timed_out', 'unknown'))
                  + (SELECT count(*) FROM open_claims)",
            &[],
        )
        .map_err(|e| format!("the history: {e}"))?
        .get(0);
    x.history_off = x.claims_kept.abs_diff(history as u64);
    Ok(())
}

/// Removes a stream and its dead letters, if they are there.
fn delete_stream(nats: &str, stream: &str) {
    runtime().block_on(async {
        if let Ok(client) = async_nats::connect(nats).await {
            let js = async_nats::jetstream::new(client);
            for name in [stream.to_string(), format!("{stream}_DLQ")] {
                let _ = js.delete_stream(&name).await;
            }
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
