#!/usr/bin/env bash
# Runs berth on this machine the embedded way: a fake Launchpad with 4 PPAs, one worker per
# PPA and the assigner on 127.0.0.1:8080, against the local RabbitMQ (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/ensure-rabbitmq.sh
cargo build --workspace --bins
exec target/debug/berth dev "$@"
