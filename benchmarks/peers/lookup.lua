-- wrk script (benchmarks/peers/concurrency.py): POST /get-online-features, Feast's request shape, with WIDTH
-- random user ids per request, a seed per wrk thread, and Content-Type: application/json.
--   wrk -t T -c C -d D -s lookup.lua http://127.0.0.1:PORT -- USERS WIDTH SEED FEATURE,FEATURE,... [TOKEN]
-- done() prints one JSON line: request count, duration, errors and latency percentiles in microseconds.
local users, width, features
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  users = tonumber(args[1])
  width = tonumber(args[2])
  math.randomseed(tonumber(args[3]) + (id or 0) * 7919)
  local refs = {}
  for ref in string.gmatch(args[4], "[^,]+") do
    refs[#refs + 1] = '"' .. ref .. '"'
  end
  features = "[" .. table.concat(refs, ",") .. "]"
  wrk.headers["Content-Type"] = "application/json"
  if args[5] and args[5] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[5]
  end
end

function request()
  local ids = {}
  for i = 1, width do
    ids[i] = tostring(math.random(1, users))
  end
  local body = '{"features":' .. features .. ',"entities":{"user_id":[' .. table.concat(ids, ",") .. ']}}'
  return wrk.format("POST", "/get-online-features", nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
