-- wrk script of the server bench (benches/server.rs): every request is `POST /events/<instance>`
-- with the JSON body of the file $WRK_BODY_FILE and the header `apikey: $WRK_APIKEY`, the instances
-- of $WRK_INSTANCES (comma-separated) taken in turn. The body is read once; the requests are
-- formatted once per thread. At the end one line, `wrk-result requests=… duration_us=… connect=…
-- read=… write=… status=… timeout=…`, gives what the bench reads (status: answers that were not
-- 2xx or 3xx). With $WRK_PORTS (comma-separated ports of the same host), the threads connect to
-- those ports in turn (thread i to port i mod n): one wrk run spreads its load over several server
-- replicas, its summary adding them up.

local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
local body = file:read("*a")
file:close()

local formatted = {}
local next_one = 0

local ports = {}
local threads = 0

function setup(thread)
    local list = os.getenv("WRK_PORTS")
    if list == nil or list == "" then
        return
    end
    if #ports == 0 then
        for port in string.gmatch(list, "[^,]+") do
            ports[#ports + 1] = port
        end
    end
    local port = ports[threads % #ports + 1]
    threads = threads + 1
    thread.addr = wrk.lookup(wrk.host, port)[1]
end

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
