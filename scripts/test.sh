#!/usr/bin/env bash
# Runs every check and every test of fog-orchestrator, installing what the tests need on a fresh Debian
# machine first. This is the README's test command; .ci/run calls it. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tools the tests need"
# Prometheus (promtool, and the server the live alert test runs), Alertmanager (amtool, and the server) and
# Chromium (the built-in page's test drives it headless) and etcd (the fleet test runs a 3-member cluster),
# from Debian's packages.
if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
  || ! command -v chromium >/dev/null || ! command -v etcd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager chromium fonts-dejavu-core \
    etcd-server >/dev/null
fi
# `sed -n 1p`, not `head -1`: head exits after one line, and a tool still writing gets SIGPIPE, which
# pipefail turns into a failed run.
promtool --version | sed -n 1p
prometheus-alertmanager --version 2>&1 | sed -n 1p
chromium --version 2>/dev/null | sed -n 1p
etcd --version | sed -n 1p

echo "== formatting"
cargo fmt --check
# The spawn helper is a program of its own that build.rs compiles, outside cargo's module tree.
rustfmt --edition 2024 --check spawner/main.rs

echo "== lints"
cargo clippy --all-targets --locked -- -D warnings
# The spawn helper, with the flags build.rs builds it with.
spawner_dir=$(mktemp -d)
clippy-driver --edition=2024 --crate-type=bin -C panic=abort -C relocation-model=static \
  -C target-feature=+crt-static -C link-arg=-nostartfiles -C link-arg=-nostdlib -D warnings \
  -o "$spawner_dir/fog-spawn" spawner/main.rs
rm -rf "$spawner_dir"

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"

echo "== OpenMetrics exposition (a strict parser, exemplars, gzip)"
scripts/openmetrics-check.py

echo "== API contract (schemathesis against the served OpenAPI document)"
# The summary when it passes; everything (the failing cases, any error's traceback) when it does not.
schemathesis_log=$(mktemp)
trap 'rm -f "$log" "$schemathesis_log"' EXIT
if scripts/schemathesis.sh > "$schemathesis_log" 2>&1; then
  tail -25 "$schemathesis_log"
else
  cat "$schemathesis_log"
  exit 1
fi

echo "== chaos soak (2 minutes)"
scripts/chaos.sh 2

# One closing line for all test binaries together (cargo prints one per binary, the last often doc-tests).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
