#!/usr/bin/env bash
# Load benchmark: WatchLLM against nginx and a bare Pingora proxy, in front of the mock provider.
#
# Usage: bash benches/load.sh
#
# It installs nginx and wrk from Debian's packages when they are missing and builds the release
# binary and the passthrough example. Then it starts these servers on free 127.0.0.1 ports:
#   the mock provider (zero latency), nginx (1 worker, upstream keepalive), the bare Pingora proxy
#   (benches/passthrough.rs, 1 thread) and WatchLLM (threads: 1, SQLite, auth and accounting on).
# The proxies run on CPU 0; wrk, the stream probe and the mock run on CPU 1.
# Each target gets the same POST /v1/chat/completions (non-streamed) from wrk, closed loop, at
# 1 and 32 connections. Two more WatchLLM instances, one with limits and one with routing
# features on, are then measured against the plain one in alternating rounds at 32 connections.
# Then benches/stream_probe.py measures streaming directly and through WatchLLM. The script
# prints Markdown tables and stops everything it started on exit.
#
# Settings (environment):
#   BENCH_SECONDS   seconds of each measured wrk run (default 5)
#   BENCH_NO_BUILD  set to 1 to use the binaries already in target/release
#   BENCH_KEEP      set to 1 to keep the working folder with the logs
#   BENCH_ROUNDS    rounds of the features comparison at 32 connections (default 3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCHES="$ROOT/benches"
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
WARMUP_SECONDS=1
PROXY_CPU=0
LOAD_CPU=1
STREAM_REQUESTS=10
STREAM_CHUNKS=10
STREAM_DELAY_MS=50

log() { echo "load.sh: $*" >&2; }
fail() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools

install_missing() {
    local packages=()
    command -v wrk >/dev/null || packages+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || packages+=(nginx-light)
    command -v taskset >/dev/null || packages+=(util-linux)
    command -v python3 >/dev/null || packages+=(python3)
    command -v curl >/dev/null || packages+=(curl)
    [[ ${#packages[@]} -eq 0 ]] && return
    log "installing ${packages[*]} with apt-get"
    # Debian's nginx package starts a service on port 80 unless policy-rc.d forbids it.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    return 0
}

install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ $(nproc) -ge 2 ]] || fail "pinning needs 2 CPUs; nproc reports $(nproc)"

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "building the release binary and the passthrough example"
    (cd "$ROOT" && cargo build --release --quiet --bin watchllm --example passthrough)
fi
WATCHLLM="$ROOT/target/release/watchllm"
PASSTHROUGH="$ROOT/target/release/examples/passthrough"
[[ -x $WATCHLLM && -x $PASSTHROUGH ]] || fail "missing $WATCHLLM or $PASSTHROUGH; build them or unset BENCH_NO_BUILD"

# ---------------------------------------------------------------- processes

WORK=$(mktemp -d /tmp/watchllm-bench.XXXXXX)
# nginx workers run as nobody, and they open the temp folders below.
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sets the variable named $1 to a port that was free on 127.0.0.1 and that this script has not
# handed out before. The probe socket closes before the server binds, so the kernel may offer one
# port twice.
ISSUED_PORTS=" "
pick_port() {
    local candidate
    while :; do
        candidate=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        [[ $ISSUED_PORTS == *" $candidate "* ]] || break
    done
    ISSUED_PORTS+="$candidate "
    printf -v "$1" %s "$candidate"
}

# Waits until something accepts connections on 127.0.0.1:$1, for at most 30 s.
wait_for_port() {
    local port=$1 name=$2 pid=$3
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up; see its log in $WORK (BENCH_KEEP=1 keeps it)"
        sleep 0.1
    done
    fail "$name did not listen on 127.0.0.1:$port within 30 s"
}

# Starts a command in the background on CPU $1 with its output in $WORK/$2.log.
start_pinned() {
    local cpu=$1 name=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}

pick_port MOCK_PORT
pick_port NGINX_PORT
pick_port PASSTHROUGH_PORT
pick_port GATEWAY_PORT
pick_port ADMIN_PORT

start_pinned $LOAD_CPU mock "$WATCHLLM" mock-upstream --listen "127.0.0.1:$MOCK_PORT"
wait_for_port "$MOCK_PORT" "the mock provider" "$LAST_PID"

# nginx: a plain reverse proxy, 1 worker, HTTP/1.1 keepalive to the mock, access log on as a
# deployed nginx has it (WatchLLM also writes one line per request).
mkdir -m 777 "$WORK/nginx-temp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log $WORK/nginx-access.log;
    client_body_temp_path $WORK/nginx-temp/body;
    proxy_temp_path $WORK/nginx-temp/proxy;
    fastcgi_temp_path $WORK/nginx-temp/fastcgi;
    uwsgi_temp_path $WORK/nginx-temp/uwsgi;
    scgi_temp_path $WORK/nginx-temp/scgi;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
start_pinned $PROXY_CPU nginx "$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
wait_for_port "$NGINX_PORT" nginx "$LAST_PID"

start_pinned $PROXY_CPU passthrough "$PASSTHROUGH" "127.0.0.1:$PASSTHROUGH_PORT" "127.0.0.1:$MOCK_PORT"
wait_for_port "$PASSTHROUGH_PORT" "the Pingora passthrough" "$LAST_PID"

# WatchLLM: 1 thread, the mock as its provider, a fresh SQLite state folder, and every other key
# at its default (conf/watchllm.yaml lists them). The limits by client address are off because
# all the load comes from 127.0.0.1. The response cache is off by default, so every request
# reaches the mock.
CONFIG="$WORK/watchllm.yaml"
cp "$ROOT/conf/pricing.yaml" "$WORK/pricing.yaml"
cat >"$CONFIG" <<EOF
threads: 1
pricing_file: pricing.yaml
providers:
  mock:
    base_url: "http://127.0.0.1:$MOCK_PORT/v1"
models:
  gpt-4o-mini:
    provider: mock
limits:
  ip:
    enabled: false
EOF
export WATCHLLM_LISTEN="127.0.0.1:$GATEWAY_PORT"
export WATCHLLM_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
export WATCHLLM_STATE_DIR="$WORK/state"
"$WATCHLLM" project create bench --config "$CONFIG" >/dev/null
API_KEY=$("$WATCHLLM" key create bench --config "$CONFIG")
[[ $API_KEY == wllm_* ]] || fail "key create printed no key"

start_pinned $PROXY_CPU watchllm "$WATCHLLM" serve --config "$CONFIG"
GATEWAY_PID=$LAST_PID
wait_for_port "$GATEWAY_PORT" WatchLLM "$GATEWAY_PID"
wait_for_port "$ADMIN_PORT" "WatchLLM's admin listener" "$GATEWAY_PID"

# Two more WatchLLM instances, idle until their turn, with features whose cost should stay within
# 5% of the plain gateway's throughput. Same provider, same project name and key format.
#   watchllm_limits: the limits by client address on (at a rate that the load never reaches),
#     and a plan with every monthly quota and per-key limit set, high enough never to reject.
#   watchllm_routing: an A/B experiment on the requested model with two weighted variants, health
#     probes every second, and the project's own provider key (BYOK), decrypted per request.
export WATCHLLM_MASTER_KEY="bench-master-secret-$(date +%s%N)"
start_variant() {
    local name=$1 extra=$2 port admin dir key
    pick_port port
    pick_port admin
    dir="$WORK/$name"
    mkdir -p "$dir"
    cp "$ROOT/conf/pricing.yaml" "$dir/pricing.yaml"
    # The routing variant's second model, at the price of the first.
    printf '  gpt-4o-mini-b:\n    input: 0.15\n    output: 0.60\n' >>"$dir/pricing.yaml"
    printf 'threads: 1\npricing_file: pricing.yaml\nproviders:\n  mock:\n    base_url: "http://127.0.0.1:%s/v1"\n%s\n' \
        "$MOCK_PORT" "$extra" >"$dir/watchllm.yaml"
    (
        export WATCHLLM_LISTEN="127.0.0.1:$port" WATCHLLM_ADMIN_LISTEN="127.0.0.1:$admin" WATCHLLM_STATE_DIR="$dir/state"
        "$WATCHLLM" project create bench --plan bench --config "$dir/watchllm.yaml" >/dev/null
        "$WATCHLLM" key create bench --config "$dir/watchllm.yaml" >"$dir/key"
        if [[ $name == watchllm_routing ]]; then
            printf %s "sk-bench-own-key" | "$WATCHLLM" provider-key set bench mock --config "$dir/watchllm.yaml" >/dev/null
        fi
    )
    key=$(cat "$dir/key")
    [[ $key == wllm_* ]] || fail "key create printed no key for $name"
    WATCHLLM_LISTEN="127.0.0.1:$port" WATCHLLM_ADMIN_LISTEN="127.0.0.1:$admin" WATCHLLM_STATE_DIR="$dir/state" \
        start_pinned $PROXY_CPU "$name" "$WATCHLLM" serve --config "$dir/watchllm.yaml"
    wait_for_port "$port" "$name" "$LAST_PID"
    VARIANT_PORTS[$name]=$port
    VARIANT_KEYS[$name]=$key
}
declare -A VARIANT_PORTS VARIANT_KEYS
BIG=1000000000
start_variant watchllm_limits "models:
  gpt-4o-mini:
    provider: mock
limits:
  ip:
    enabled: true
    requests_per_second: $BIG
    burst: $BIG
  plans:
    bench:
      monthly_requests: $BIG
      monthly_tokens: $((BIG * 1000))
      monthly_cost_usd: $BIG
      requests_per_minute: $BIG
      tokens_per_minute: $((BIG * 1000))
      max_concurrent_requests: 10000"
start_variant watchllm_routing "models:
  gpt-4o-mini:
    provider: mock
  gpt-4o-mini-b:
    provider: mock
    upstream_model: gpt-4o-mini
limits:
  ip:
    enabled: false
  plans:
    bench: {}
health:
  enabled: true
  interval_ms: 1000
experiments:
  bench-split:
    model: gpt-4o-mini
    variants:
      - name: control
        model: gpt-4o-mini
        weight: 0.5
      - name: other
        model: gpt-4o-mini-b
        weight: 0.5"

# ---------------------------------------------------------------- measurements

RESULTS="$WORK/results.txt"
: >"$RESULTS"
record() { echo "$1 $2" >>"$RESULTS"; }

rss_kib() { awk -v field="$2:" '$1 == field { print $2 }' "/proc/$1/status"; }

# Every target must return 200 for the benchmark request before it is measured.
check_target() {
    local name=$1 port=$2 status
    status=$(curl -sS -o "$WORK/check-$name.json" -w '%{http_code}' --max-time 5 \
        -H 'Content-Type: application/json' -H "Authorization: Bearer ${WRK_KEY:-$API_KEY}" \
        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}]}' \
        "http://127.0.0.1:$port/v1/chat/completions")
    [[ $status == 200 ]] || fail "$name answered $status: $(head -c 300 "$WORK/check-$name.json")"
}

# Runs wrk for $3 seconds at $2 connections against port $1 and prints its RESULT line.
run_wrk() {
    local port=$1 connections=$2 seconds=$3 output
    output=$(WRK_API_KEY=${WRK_KEY:-$API_KEY} taskset -c $LOAD_CPU wrk -t1 -c"$connections" -d"${seconds}s" --timeout 5s \
        -s "$BENCHES/chat_request.lua" "http://127.0.0.1:$port/v1/chat/completions")
    grep '^RESULT' <<<"$output" || fail "wrk printed no result: $output"
}

# Prints the busy and total jiffies of CPU 0 and CPU 1 from /proc/stat, counting every process.
cpu_snapshot() {
    awk '/^cpu[01] / { idle = $5 + $6; total = 0; for (i = 2; i <= 9; i++) total += $i; printf "%d %d ", total - idle, total }' /proc/stat
}

# Prints how busy CPU 0 and CPU 1 were between two snapshots, in percent.
cpu_busy() {
    awk -v before="$1" -v after="$2" 'BEGIN {
        split(before, b, " "); split(after, a, " ")
        printf "cpu0_busy=%.0f cpu1_busy=%.0f", 100 * (a[1] - b[1]) / (a[2] - b[2]), 100 * (a[3] - b[3]) / (a[4] - b[4])
    }'
}

# Measures one target at 1 and 32 connections. With a process id as $3, it samples that process's
# resident memory during the 32-connection run.
measure() {
    local name=$1 port=$2 pid=${3:-} line before wrk_pid rss max_rss=0
    check_target "$name" "$port"
    run_wrk "$port" 32 "$WARMUP_SECONDS" >/dev/null

    line=$(run_wrk "$port" 1 "$SECONDS_PER_RUN")
    log "$name c=1: ${line#RESULT }"
    record "$name.c1" "${line#RESULT }"

    before=$(cpu_snapshot)
    run_wrk "$port" 32 "$SECONDS_PER_RUN" >"$WORK/$name-c32.txt" &
    wrk_pid=$!
    while [[ -n $pid ]] && kill -0 "$wrk_pid" 2>/dev/null; do
        rss=$(rss_kib "$pid" VmRSS)
        if ((rss > max_rss)); then max_rss=$rss; fi
        sleep 0.5
    done
    wait "$wrk_pid"
    line="$(cat "$WORK/$name-c32.txt") $(cpu_busy "$before" "$(cpu_snapshot)")"
    log "$name c=32: ${line#RESULT }"
    record "$name.c32" "${line#RESULT }"
    if [[ -n $pid ]]; then
        record "${name}_rss_load_kib" "$max_rss"
        record "${name}_rss_peak_kib" "$(rss_kib "$pid" VmHWM)"
    fi
}

log "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg) (quiet is below 0.7)"
record load_before "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ',')"
# WatchLLM loads its tokenizer in a background thread after start, so idle memory is read once
# the resident size has stopped changing for 1 s (at most 15 s).
idle_rss=$(rss_kib "$GATEWAY_PID" VmRSS)
for _ in $(seq 15); do
    sleep 1
    rss=$(rss_kib "$GATEWAY_PID" VmRSS)
    [[ $rss == "$idle_rss" ]] && break
    idle_rss=$rss
done
record watchllm_rss_idle_kib "$idle_rss"

measure direct "$MOCK_PORT"
measure nginx "$NGINX_PORT"
measure passthrough "$PASSTHROUGH_PORT"
measure watchllm "$GATEWAY_PORT" "$GATEWAY_PID"

# Features: the plain gateway and the two variants at 32 connections, in alternating rounds so
# that a change in the machine's load touches all three alike. Each reports its median round.
ROUNDS=${BENCH_ROUNDS:-3}
for target in watchllm watchllm_limits watchllm_routing; do
    if [[ $target != watchllm ]]; then
        WRK_KEY=${VARIANT_KEYS[$target]} check_target "$target" "${VARIANT_PORTS[$target]}"
        WRK_KEY=${VARIANT_KEYS[$target]} run_wrk "${VARIANT_PORTS[$target]}" 32 "$WARMUP_SECONDS" >/dev/null
    fi
done
for round in $(seq $ROUNDS); do
    for target in watchllm watchllm_limits watchllm_routing; do
        port=${VARIANT_PORTS[$target]:-$GATEWAY_PORT}
        line=$(WRK_KEY=${VARIANT_KEYS[$target]:-} run_wrk "$port" 32 "$SECONDS_PER_RUN")
        log "features round $round, $target c=32: ${line#RESULT }"
        record "features.$target.$round" "${line#RESULT }"
    done
done

# Streaming: time to first token and gaps between chunks, directly and through WatchLLM.
for target in "direct $MOCK_PORT" "watchllm $GATEWAY_PORT"; do
    read -r name port <<<"$target"
    line=$(taskset -c $LOAD_CPU python3 "$BENCHES/stream_probe.py" "127.0.0.1:$port" \
        $STREAM_REQUESTS $STREAM_CHUNKS $STREAM_DELAY_MS "$API_KEY")
    log "stream $name: ${line#RESULT }"
    record "stream.$name" "${line#RESULT }"
done
record load_after "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ',')"
record watchllm_rss_after_kib "$(rss_kib "$GATEWAY_PID" VmRSS)"

# The usage events in the store show that accounting was on and kept up. The writer flushes a
# partial batch within accounting.flush_interval_ms (200 ms), so 1 s is enough for the last one.
sleep 1
record usage_events "$(python3 -c 'import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])' "$WORK/state/watchllm.db")"

# ---------------------------------------------------------------- report

python3 - "$RESULTS" "$SECONDS_PER_RUN" <<'PYTHON'
import sys

results, seconds = sys.argv[1], sys.argv[2]
values = {}
for line in open(results):
    name, _, rest = line.strip().partition(" ")
    if "=" in rest:
        values[name] = {k: float(v) for k, v in (pair.split("=") for pair in rest.split())}
    else:
        values[name] = rest

def ms(us):
    return f"{us / 1000:.3f}"

direct_p50 = values["direct.c1"]["p50_us"]
direct_p99 = values["direct.c1"]["p99_us"]
rows = [("direct", "mock provider, no proxy"), ("nginx", "nginx, 1 worker"),
        ("passthrough", "bare Pingora proxy, 1 thread"), ("watchllm", "WatchLLM, 1 thread, auth + accounting")]

print()
print(f"Non-streamed POST /v1/chat/completions, wrk closed loop, {seconds} s per run.")
print()
print("| target | req/s at 32 conn. | p50 at 1 conn. (ms) | p99 at 1 conn. (ms) | added p50 (ms) | added p99 (ms) "
      "| CPU 0 / CPU 1 busy at 32 conn. (%) | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for key, label in rows:
    c1, c32 = values[f"{key}.c1"], values[f"{key}.c32"]
    errors = int(c1["socket_errors"] + c1["status_errors"] + c32["socket_errors"] + c32["status_errors"])
    added = "" if key == "direct" else (ms(c1["p50_us"] - direct_p50), ms(c1["p99_us"] - direct_p99))
    print(f"| {label} | {c32['rps']:.0f} | {ms(c1['p50_us'])} | {ms(c1['p99_us'])} | "
          f"{added[0] if added else '-'} | {added[1] if added else '-'} | "
          f"{c32['cpu0_busy']:.0f} / {c32['cpu1_busy']:.0f} | {errors} |")

nginx, gateway = values["nginx.c1"], values["watchllm.c1"]
throughput_ratio = values["watchllm.c32"]["rps"] / values["nginx.c32"]["rps"]
nginx_added = nginx["p99_us"] - direct_p99
gateway_added = gateway["p99_us"] - direct_p99
print()
print("| comparison | value | target | met |")
print("|---|---:|---:|---|")
print(f"| WatchLLM / nginx throughput at 32 conn. | {throughput_ratio:.2f} | >= 0.80 | {'yes' if throughput_ratio >= 0.8 else 'no'} |")
if nginx_added > 0:
    p99_ratio = gateway_added / nginx_added
    print(f"| WatchLLM / nginx added p99 at 1 conn. | {p99_ratio:.2f} | <= 1.20 | {'yes' if p99_ratio <= 1.2 else 'no'} |")
else:
    print(f"| WatchLLM / nginx added p99 at 1 conn. | n/a (nginx added {ms(nginx_added)} ms) | <= 1.20 | n/a |")
print(f"| Pingora passthrough / nginx throughput | {values['passthrough.c32']['rps'] / values['nginx.c32']['rps']:.2f} | | |")

rounds = sorted({int(k.rsplit(".", 1)[1]) for k in values if k.startswith("features.watchllm.")})
def median_rps(target):
    rates = sorted(values[f"features.{target}.{r}"]["rps"] for r in rounds)
    return rates[len(rates) // 2], rates
base_rps, base_rates = median_rps("watchllm")
print()
print(f"Features at 32 connections: {len(rounds)} alternating rounds of {seconds} s, median round.")
print()
print("| WatchLLM with | req/s (median) | rounds (req/s) | ratio to plain | target | met |")
print("|---|---:|---|---:|---:|---|")
for target, label in (("watchllm", "auth and accounting only"), ("watchllm_limits", "limits: IP, quotas, per-key rates"),
                      ("watchllm_routing", "routing: experiment, health probes, BYOK")):
    rps, rates = median_rps(target)
    ratio = rps / base_rps
    errors = sum(int(values[f"features.{target}.{r}"]["socket_errors"] + values[f"features.{target}.{r}"]["status_errors"]) for r in rounds)
    target_text, met = ("", "") if target == "watchllm" else (">= 0.95", "yes" if ratio >= 0.95 else "no")
    print(f"| {label} | {rps:.0f} | {', '.join(f'{r:.0f}' for r in rates)} | {ratio:.3f} | {target_text} | {met} |"
          + ("" if errors == 0 else f" ({errors} errors)"))

direct, gateway_stream = values["stream.direct"], values["stream.watchllm"]
print()
print("Streaming: 10 requests of 10 content chunks, 50 ms apart (x-mock-chunk-delay-ms).")
print()
print("| path | TTFT p50 (ms) | TTFT p90 (ms) | gap p50 (ms) | gap p99 (ms) | gap max (ms) | failed |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, s in (("direct", direct), ("through WatchLLM", gateway_stream)):
    print(f"| {label} | {s['ttft_p50_ms']:.2f} | {s['ttft_p90_ms']:.2f} | {s['gap_p50_ms']:.2f} | "
          f"{s['gap_p99_ms']:.2f} | {s['gap_max_ms']:.2f} | {int(s['failures'])} |")

print()
print("| WatchLLM resident memory | MiB |")
print("|---|---:|")
print(f"| idle, after start (tokenizer loaded) | {float(values['watchllm_rss_idle_kib']) / 1024:.1f} |")
print(f"| under load, max sampled at 32 conn. | {float(values['watchllm_rss_load_kib']) / 1024:.1f} |")
print(f"| peak (VmHWM) | {float(values['watchllm_rss_peak_kib']) / 1024:.1f} |")
print(f"| idle again, after all runs | {float(values['watchllm_rss_after_kib']) / 1024:.1f} |")
print()
measured = sum(values[f"watchllm.c{c}"]["requests"] for c in (1, 32))
measured += sum(values[f"features.watchllm.{r}"]["requests"] for r in rounds)
print(f"Usage events stored: {values['usage_events']}, for {measured:.0f} requests completed in the measured runs "
      "(the features rounds included) "
      "plus the warm-up, the checks and the stream probe. "
      f"Load average (1, 5, 15 min) before: {values['load_before']}, after: {values['load_after']}.")
PYTHON
