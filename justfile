# Mayhem Mandrill: one recipe per habit. `just --list` shows them.

# Run the service at the talk's pace until Ctrl-C; extra flags pass through.
run *FLAGS:
    cargo run --release -- {{FLAGS}}

# Run the whole test suite, as CI does.
test:
    cargo test

# Install what the dashboard's browser test drives: Debian's Chromium, and
# playwright-core in tests/browser. Without them that one test skips, loudly.
browser-deps:
    command -v chromium >/dev/null || sudo apt-get install -y chromium
    cd tests/browser && npm ci --no-audit --no-fund

# Check formatting and lints, as CI does.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Run the P1-P6 and scaling benchmarks on the release binary (a few minutes): prints a
# markdown table of medians of 3 and writes target/bench/bench.json and bench.svg. Then
# the real-broker benchmarks (the local nats-server, the Pub/Sub emulator, and the talk's
# design on Google's Python client in a virtualenv): target/bench/bench_brokers.json.
# Last, the fleet's: PostgreSQL and the guard (the local PostgreSQL and NATS):
# target/bench/bench_fleet.json.
bench:
    cargo build --release --bin mandrill --example bench --example bench_brokers --example bench_fleet
    cargo run --release --example bench -- target/bench
    test -x target/bench/venv/bin/python || (python3 -m venv target/bench/venv && target/bench/venv/bin/pip install -q google-cloud-pubsub==2.44.0)
    MANDRILL_BENCH_PYTHON=target/bench/venv/bin/python cargo run --release --example bench_brokers -- target/bench
    cargo run --release --example bench_fleet -- target/bench

# The torture suite on the release binary: signals at random moments, panics in every
# actor, hostile input, store and broker faults, a fleet with an instance killed, and
# fuzzing; prints a table and writes target/torture/torture.json (RELIABILITY.md).
# `just torture --quick` runs the slice CI runs; `--seed N` replays a run; `--only fuzz`
# runs one scenario. Fuzzing needs the nightly toolchain and cargo-fuzz; their first
# build of the targets takes a while.
torture *FLAGS:
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cargo build --release --bin mandrill --example torture
    cargo run --release --example torture -- {{FLAGS}}

# Build the API docs, including private items, and open nothing.
doc:
    cargo doc --no-deps --document-private-items
