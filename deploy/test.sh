#!/usr/bin/env bash
# The whole test suite: makes sure a broker and a headless browser are there, builds every binary (the tests start the
# real `berth` and `berth-worker` processes), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/ensure-rabbitmq.sh
./deploy/ensure-chromium.sh
cargo build --workspace --bins
cargo test --workspace "$@"
