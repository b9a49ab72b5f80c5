#!/usr/bin/env bash
# Benchmarks the REST API with wrk (from Debian): requests/s and latency of GET /api/orchestration/health and
# GET /metrics with 10 and 1,000 services. Every server listens on 127.0.0.1 on a port picked at run time and
# is stopped at the end. Usage: scripts/bench-api.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet
binary=target/release/fog-orchestrator
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

for services in 10 1000; do
  port=$(free_port)
  config="$work/bench-$services.toml"
  # External services, each probed over TCP (against the API's own port) every 30 s.
  for i in $(seq 1 "$services"); do
    printf '[services.s%d]\nhealth.tcp = "127.0.0.1:%d"\nhealth.check_interval = "30s"\n' "$i" "$port"
  done > "$config"
  RUST_LOG=warn "$binary" run --config "$config" --listen "127.0.0.1:$port" 2> "$work/log-$services" &
  pid=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.05
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "orchestrator did not become ready"; cat "$work/log-$services"; exit 1; }
  for path in /api/orchestration/health /metrics; do
    echo "== $services services, GET $path (wrk -t2 -c32 -d${duration}s)"
    wrk -t2 -c32 -d"${duration}s" --latency "http://127.0.0.1:$port$path" |
      grep -E 'Requests/sec|Latency  |  50%|  90%|  99%|Non-2xx'
  done
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
done
