-- wrk script of the server bench (benches/server.rs): every request is `POST /events/<instance>`
-- with the JSON body of the file $WRK_BODY_FILE and the header `apikey: $WRK_APIKEY`, the instances
-- of the file $WRK_INSTANCES_FILE (one per line) taken in turn; with $WRK_APIKEYS_FILE (one key per
-- line, in the same order) each instance's request carries its own key instead. (Files, not
-- variables: 10 000 instances' tokens exceed what one environment variable may hold.) The body is read once; the requests are
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

local function lines(path)
    local out = {}
    if path == nil or path == "" then
        return out
    end
    for line in io.lines(path) do
        if line ~= "" then
            out[#out + 1] = line
        end
    end
    return out
end

function init(args)
    local keys = lines(os.getenv("WRK_APIKEYS_FILE"))
    for _, name in ipairs(lines(os.getenv("WRK_INSTANCES_FILE"))) do
        local key = keys[#formatted + 1] or os.getenv("WRK_APIKEY")
        local headers = { ["content-type"] = "application/json", ["apikey"] = key }
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
