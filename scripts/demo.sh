#!/usr/bin/env bash
# Starts the mock provider and the gateway with the default config, creates a project and a key,
# sends a first chat completion, and keeps both running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bin=target/release/watchllm
config=conf/watchllm.yaml

# The project and key exist before the gateway starts, so its first key snapshot has them.
"$bin" project create demo --config "$config" >/dev/null 2>&1 || true
key=$("$bin" key create demo --config "$config")

"$bin" mock-upstream --listen 127.0.0.1:9090 &
mock_pid=$!
"$bin" serve --config "$config" &
gateway_pid=$!
trap 'kill "$gateway_pid" "$mock_pid" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

# /health answers once the proxy accepts connections.
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8081/health >/dev/null && break
  sleep 0.1
done

echo
echo "API key for project demo: $key"
echo "Request:  POST http://127.0.0.1:8080/v1/chat/completions"
echo "Response:"
curl -s http://127.0.0.1:8080/v1/chat/completions \
  -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to WatchLLM"}]}'
echo
echo
echo "The gateway is on http://127.0.0.1:8080/v1 (admin on 127.0.0.1:8081). Press Ctrl-C to stop."
wait "$gateway_pid"
