#!/usr/bin/env bash
# Runs the whole test suite: Rust unit tests, then the end-to-end tests that drive the real binary
# with the OpenAI Python SDK against the mock upstream, on SQLite and on PostgreSQL.
# PostgreSQL must be reachable at 127.0.0.1:5432 with trust auth (override with WATCHLLM_TEST_PG).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The store tests fail, rather than skip, when this server is unreachable.
export WATCHLLM_TEST_POSTGRES_URL="${WATCHLLM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo test --release --locked
.venv/bin/python -m pytest tests/integration -q -p no:cacheprovider "$@"
