#!/usr/bin/env bash
# fog-orchestrator side by side with the peers a user would pick instead (monit, runit, s6, nginx), in one
# run: prints a table of ratios (issue 12; BENCHMARKS.md records it). A bench, not part of CI.
#   scripts/bench-peers.sh [checks|restart|spawn|rest ...]   (default: all; about 11 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
missing=""
for tool in monit runsv s6-svscan nginx wrk gcc; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends monit runit s6 nginx-light wrk gcc >/dev/null
fi
cargo build --release --locked --quiet
mkdir -p target/peers
gcc -O2 -o target/peers/stamp benches/peers/stamp.c
gcc -O2 -o target/peers/floor benches/peers/floor.c
gcc -O2 -o target/peers/checks benches/peers/checks.c
exec python3 scripts/bench_peers.py "$@"
