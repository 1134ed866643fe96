-- wrk script: sends pre-signed deliveries from a file written by bench.e2e.webhooks.
-- Usage: wrk -t THREADS -s load.lua URL -- FILE THREADS
-- Thread k of n sends requests k, k+n, k+2n, ... so no two threads send the same one;
-- a thread that runs out starts over, and done() reports it (the numbers would then
-- include duplicates, which the router answers from memory).

local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  threads[counter] = thread
  counter = counter + 1
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  reqs = {}
  local pos, index = 1, 0
  local total = tonumber(args[2]) or 1
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    if index % total == id - 1 then
      reqs[#reqs + 1] = string.sub(data, nl + 1, nl + len)
    end
    index = index + 1
    pos = nl + 1 + len
  end
  nextreq = 0
  wrapped = 0
end

function request()
  nextreq = nextreq + 1
  if nextreq > #reqs then
    nextreq = 1
    wrapped = wrapped + 1
  end
  return reqs[nextreq]
end

function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  io.write(string.format("wrapped: %d\n", wraps))
end
