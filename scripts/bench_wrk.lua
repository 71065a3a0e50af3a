-- wrk script of scripts/bench.py: small requests to presigned URLs, every status checked.
--
--   wrk -t1 -c8 -d10s -s scripts/bench_wrk.lua http://HOST:PORT/ -- METHOD PATHS BODY_BYTES
--
-- PATHS is a file of request targets, one a line (a presigned URL's path and query string, for
-- the URL's host); each thread builds every request once (wrk.format, with a body of BODY_BYTES
-- fixed pseudo-random bytes if BODY_BYTES > 0, so a PUT carries Content-Length) and then cycles
-- through them, each thread from its own offset. A response counts as done only if its status
-- is 200; done() prints one line for bench.py to parse:
--   BENCH-RESULT requests=... duration_us=... ok=... other=... first_other=... connect=...
--   read=... write=... status=... timeout=... p50_us=... p99_us=...

local threads = {}
local created = 0

function setup(thread)
   thread:set("id", created)
   created = created + 1
   table.insert(threads, thread)
end

function init(args)
   local method, paths, size = args[1], args[2], tonumber(args[3] or "0")
   local body = nil
   if size > 0 then
      math.randomseed(12345)
      local bytes = {}
      for i = 1, size do
         bytes[i] = string.char(math.random(0, 255))
      end
      body = table.concat(bytes)
   end
   prepared = {}
   for line in io.lines(paths) do
      if line ~= "" then
         prepared[#prepared + 1] = wrk.format(method, line, nil, body)
      end
   end
   if #prepared == 0 then
      error("no request targets in " .. paths)
   end
   index = id * 7919
   ok, other, first_other = 0, 0, 0
end

function request()
   index = index % #prepared + 1
   return prepared[index]
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      other = other + 1
      if first_other == 0 then
         first_other = status
      end
   end
end

function done(summary, latency, requests)
   local ok_sum, other_sum, first = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok_sum = ok_sum + thread:get("ok")
      other_sum = other_sum + thread:get("other")
      if first == 0 then
         first = thread:get("first_other")
      end
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH-RESULT requests=%d duration_us=%d ok=%d other=%d first_other=%d connect=%d read=%d "
         .. "write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, ok_sum, other_sum, first, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
