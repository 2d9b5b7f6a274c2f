-- wrk script for benches/load.sh: every connection sends the same non-streamed chat completion.
-- WRK_API_KEY (optional) becomes an `Authorization: Bearer` header. The other targets ignore it, so
-- every target receives the same bytes.
-- At the end it prints one `RESULT` line with latencies in microseconds, for load.sh to parse.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"What is the capital of France? Answer in one sentence."}],'
  .. '"temperature":0.2,"max_tokens":64}'

local key = os.getenv("WRK_API_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d"
      .. " socket_errors=%d status_errors=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status))
end
