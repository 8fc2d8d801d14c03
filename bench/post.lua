-- wrk script for bench/ingest.py: POST one request body over and over, keep-alive.
--
--   wrk ... -s bench/post.lua URL -- BODY_FILE [FIRST_REFUSAL_FILE]
--
-- BODY_FILE holds the JSON request body; it is sent with Content-Type: application/json
-- (wrk adds Content-Length). Every answer is counted by status: 202 apart from the rest,
-- because "202 once durable" is the relay's contract and wrk itself only counts >= 400.
-- The body of the first answer that is not 202 is written to FIRST_REFUSAL_FILE so the
-- benchmark can say why. done() prints one line, "BENCH_RESULT {json}", with the totals;
-- durations and latencies are in microseconds, as wrk measures them.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/json"
   refusal_file = args[2]
   accepted = 0
   refused = 0
   refused_status = 0
end

function response(status, headers, body)
   if status == 202 then
      accepted = accepted + 1
      return
   end
   refused = refused + 1
   if refused_status == 0 then
      refused_status = status
      if refusal_file then
         local out = io.open(refusal_file, "wb")
         if out then
            out:write(body or "")
            out:close()
         end
      end
   end
end

function done(summary, latency, requests)
   local total_accepted, total_refused, status = 0, 0, 0
   for _, thread in ipairs(threads) do
      total_accepted = total_accepted + thread:get("accepted")
      total_refused = total_refused + thread:get("refused")
      local seen = thread:get("refused_status")
      if seen ~= 0 then
         status = seen
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"accepted":%d,"refused":%d,"refused_status":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"min":%.1f,"mean":%.1f,"stdev":%.1f,"max":%.1f,'
         .. '"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      total_accepted, total_refused, status,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
