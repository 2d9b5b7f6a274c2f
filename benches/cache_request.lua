-- wrk script for benches/cache_load.sh: every connection sends the body in the file named by
-- WRK_BODY_FILE, with WRK_API_KEY as a Bearer key and WRK_CACHE_HEADER (if set) as the
-- x-watchllm-cache header. At the end it prints one `RESULT` line with latencies in microseconds.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "r"))
wrk.body = file:read("*a")
file:close()
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_API_KEY")
local cache_header = os.getenv("WRK_CACHE_HEADER")
if cache_header ~= nil and cache_header ~= "" then
  wrk.headers["x-watchllm-cache"] = cache_header
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
