#!/usr/bin/env bash
# Chaos soak of the FOG demo: scripts/chaos.sh [minutes] (default 2). See scripts/chaos.py for the faults
# and the checks. Exits non-zero on any violation. The test command runs 2 minutes of it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/debug/fog-orchestrator ] || cargo build --locked --quiet
exec python3 scripts/chaos.py "${1:-2}"
