#!/usr/bin/env bash
# Runs every test: unit tests (no services), then integration and fault tests against the
# real broker (started here), MariaDB on 127.0.0.1:3306 and Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kafka.sh start
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets "$@"
else
  cargo test --workspace --all-targets "$@"
fi
cargo test --workspace --doc --quiet
