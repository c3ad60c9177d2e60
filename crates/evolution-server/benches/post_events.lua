-- wrk script of the server bench (benches/server.rs): every request is `POST /events/<instance>`
-- with the JSON body of the file $WRK_BODY_FILE and the header `apikey: $WRK_APIKEY`, the instances
-- of $WRK_INSTANCES (comma-separated) taken in turn. The body is read once; the requests are
-- formatted once per thread. At the end one line, `wrk-result requests=… duration_us=… connect=…
-- read=… write=… status=… timeout=…`, gives what the bench reads (status: answers that were not
-- 2xx or 3xx).

local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
local body = file:read("*a")
file:close()

local formatted = {}
local next_one = 0

function init(args)
    local headers = { ["content-type"] = "application/json", ["apikey"] = os.getenv("WRK_APIKEY") }
    for name in string.gmatch(os.getenv("WRK_INSTANCES"), "[^,]+") do
        formatted[#formatted + 1] = wrk.format("POST", "/events/" .. name, headers, body)
    end
end

function request()
    next_one = next_one % #formatted + 1
    return formatted[next_one]
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("wrk-result requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
