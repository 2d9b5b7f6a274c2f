#!/usr/bin/env bash
# Load benchmark of the response cache through the gateway: a proxied request with the cache
# bypassed, an exact hit and a semantic hit, against the zero-latency mock provider.
#
# Usage: bash benches/cache_load.sh   (after cargo build --release and scripts/install-model.sh)
#
# Everything listens on 127.0.0.1 ports that were free at start. The gateway runs with threads: 1
# and SQLite on CPU 0, the embedding thread beside it; wrk and the mock run on CPU 1. Each case is
# one wrk run of BENCH_SECONDS (default 5) at 1 and 16 connections after a 1 s warm-up, all
# sending the same body. The script prints a Markdown table and stops what it started on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release/watchllm"
MODEL_DIR="${WATCHLLM_MODEL_DIR:-$ROOT/state/models/all-MiniLM-L6-v2}"
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Sets the variable named $1 to a port that was free on 127.0.0.1 and that this script has not
# handed out before. The probe socket closes before the server binds, so the kernel may offer one
# port twice.
ISSUED_PORTS=" "
pick_port() {
    local candidate
    while :; do
        candidate=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        [[ $ISSUED_PORTS == *" $candidate "* ]] || break
    done
    ISSUED_PORTS+="$candidate "
    printf -v "$1" %s "$candidate"
}
[[ -x "$BIN" ]] || { echo "cache_load.sh: build first: cargo build --release" >&2; exit 1; }
[[ -f "$MODEL_DIR/model.safetensors" ]] || { echo "cache_load.sh: install the model: bash scripts/install-model.sh" >&2; exit 1; }
command -v wrk >/dev/null || { echo "cache_load.sh: wrk is missing: apt-get install wrk" >&2; exit 1; }

pick_port MOCK_PORT
taskset -c 1 "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>&1 &
PIDS+=($!)
pick_port LISTEN_PORT
pick_port ADMIN_PORT
mkdir -p "$WORK/conf" "$WORK/state"
cp "$ROOT/conf/pricing.yaml" "$WORK/conf/pricing.yaml"
cat > "$WORK/conf/watchllm.yaml" <<YAML
threads: 1
listen: "127.0.0.1:$LISTEN_PORT"
admin_listen: "127.0.0.1:$ADMIN_PORT"
state_dir: "$WORK/state"
providers:
  mock:
    base_url: "http://127.0.0.1:$MOCK_PORT/v1"
models:
  gpt-4o-mini:
    provider: mock
# Every request comes from 127.0.0.1, so the limits by address are off.
limits:
  ip:
    enabled: false
cache:
  enabled: true
  semantic:
    enabled: true
    model_dir: "$MODEL_DIR"
YAML
CONFIG="$WORK/conf/watchllm.yaml"
"$BIN" project create bench --config "$CONFIG" > /dev/null
KEY=$("$BIN" key create bench --config "$CONFIG")
taskset -c 0 "$BIN" serve --config "$CONFIG" > "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/health" > /dev/null && break
    sleep 0.1
done

body() {
    printf '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"%s"}],"max_tokens":64}' "$1"
}
body "How do I reset my password?" > "$WORK/original.json"
body "How can I change my password if I forgot it?" > "$WORK/reworded.json"
URL="http://127.0.0.1:$LISTEN_PORT/v1/chat/completions"
# Store the original answer, then check that the reworded prompt is a semantic hit.
curl -sf -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" --data @"$WORK/original.json" "$URL" > /dev/null
sleep 1
curl -sf -D - -o /dev/null -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" --data @"$WORK/reworded.json" "$URL" | grep -qi "x-watchllm-cache: hit-semantic" \
    || { echo "cache_load.sh: the reworded prompt is not a semantic hit" >&2; exit 1; }

run() {
    local file="$1" header="$2" connections="$3"
    WRK_BODY_FILE="$file" WRK_API_KEY="$KEY" WRK_CACHE_HEADER="$header" \
        taskset -c 1 wrk -t1 -c"$connections" -d1s -s "$ROOT/benches/cache_request.lua" "$URL" > /dev/null
    WRK_BODY_FILE="$file" WRK_API_KEY="$KEY" WRK_CACHE_HEADER="$header" \
        taskset -c 1 wrk -t1 -c"$connections" -d"${SECONDS_PER_RUN}s" -s "$ROOT/benches/cache_request.lua" "$URL" | grep '^RESULT'
}

echo "| case | connections | requests/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|---|"
for connections in 1 16; do
    for case in "proxied (cache bypassed):$WORK/original.json:off" "exact hit:$WORK/original.json:" "semantic hit:$WORK/reworded.json:"; do
        IFS=: read -r name file header <<< "$case"
        result=$(run "$file" "$header" "$connections")
        rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<< "$result")
        p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<< "$result")
        p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<< "$result")
        errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<< "$result")
        printf '| %s | %s | %s | %.2f | %.2f | %s |\n' "$name" "$connections" "$rps" "$(bc -l <<< "$p50/1000")" "$(bc -l <<< "$p99/1000")" "$errors"
    done
done
