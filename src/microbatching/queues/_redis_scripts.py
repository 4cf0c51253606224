"""The server-side scripts of :class:`~microbatching.queues.redis.RedisQueue` (Lua, run by EVALSHA).

Every operation that must check who holds a job, or must move a job between two places,
is one script, so Redis runs it atomically: nothing can happen between the check and the
change, and a crash (of a worker, or of the connection) leaves either all of it or none.

Every script gets the queue's nine keys, in the order of :data:`KEYS` (one hash tag per
queue, so they live in one Cluster slot):

- ``stream``: ready and claimed jobs, one entry each, fields ``k`` (the message key),
  ``i`` (encoded id), ``p`` (encoded data), and, when not 0, ``a`` (attempts spent before
  this entry was added) and ``r`` (leases that ran out before it).  Consumer group
  ``workers``; an entry is claimed when it is in the group's pending list.
- ``leases``: sorted set, claimed entry id -> lease deadline (ms, the server's clock).
  The pending list's idle time belongs to whoever asks (XAUTOCLAIM's min-idle-time is
  the reclaimer's), so a lease chosen per claim needs its own record.
- ``jobs``: sorted set, message key -> enqueue time (ms): every unfinished job, so an
  enqueue of a key still there stores nothing, and the oldest one gives the oldest age.
- ``delayed``: sorted set, message key -> when it is due (ms); ``parked``: hash, message
  key -> the delayed job (MessagePack of id, data, attempts, recovered).
- ``dead``: stream of dead letters (fields ``k i p a`` as above, ``e`` the error, ``t``
  its traceback when there is one, ``f`` when it failed in ms).
- ``done``: counter of acknowledged jobs; ``meta``: hash (``serializer``, ``version``).
- ``claims``: hash, consumer -> its last claim that took jobs (the claim's id, then the
  entry ids it handed over, separated by spaces), so a claim repeated after its reply was
  lost gets the same jobs again.  These scripts delete a consumer's field when they
  remove the consumer from the group.

A lease's token is the pair (consumer, delivery count) of the claim: every claim of an
entry raises its delivery count, so a settle names the claim it was given and a script
settles only an entry still pending to that consumer at that count.  (A plain XACK checks
neither: a late XACK would remove an entry another consumer holds now.)
"""

from __future__ import annotations

__all__ = ["GROUP", "KEYS", "SCRIPTS", "VERSION"]

#: The consumer group every worker of a queue claims through.
GROUP = "workers"
#: The layout version recorded in ``meta``.
VERSION = "1"
#: The key suffixes, in the order every script receives them.
KEYS = ("stream", "leases", "jobs", "delayed", "parked", "dead", "done", "meta", "claims")

_PRELUDE = """
local S, L, J, D, H, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local C, M, R = KEYS[7], KEYS[8], KEYS[9]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fields(flat)
  local t = {}
  for n = 1, #flat, 2 do t[flat[n]] = flat[n + 1] end
  return t
end

local function count(value)
  return tonumber(value) or 0
end

-- Whether entry id is still pending to consumer at exactly this delivery count.
local function held(group, id, consumer, deliveries)
  local p = redis.call('XPENDING', S, group, id, id, 1)[1]
  return p ~= nil and p[2] == consumer and p[4] == tonumber(deliveries)
end

-- Calls fn with the items in slices (unpack has a stack limit).
local function slices(items, fn)
  for n = 1, #items, 500 do fn(unpack(items, n, math.min(n + 499, #items))) end
end

local function add(key, id, payload, attempts, recovered)
  local args = {'XADD', S, '*', 'k', key, 'i', id, 'p', payload}
  if attempts > 0 then args[#args + 1] = 'a'; args[#args + 1] = attempts end
  if recovered > 0 then args[#args + 1] = 'r'; args[#args + 1] = recovered end
  return redis.call(unpack(args))
end

-- Removes a claimed entry from the stream, the pending list and the leases.
local function settle(group, id)
  redis.call('XACK', S, group, id)
  redis.call('XDEL', S, id)
  redis.call('ZREM', L, id)
end

local function bury(f, attempts, err, trace, now)
  redis.call('ZREM', J, f.k)
  local args = {'XADD', X, '*', 'k', f.k, 'i', f.i, 'p', f.p, 'a', attempts, 'e', err, 'f', now}
  if trace ~= false then args[#args + 1] = 't'; args[#args + 1] = trace end
  redis.call(unpack(args))
end

-- Removes a consumer from the group, with its record of its last claim.
local function forget(group, consumer)
  redis.call('XGROUP', 'DELCONSUMER', S, group, consumer)
  redis.call('HDEL', R, consumer)
end

local function park(key, id, payload, attempts, recovered, due)
  redis.call('HSET', H, key, cmsgpack.pack({id, payload, attempts, recovered}))
  redis.call('ZADD', D, due, key)
end
"""

# ARGV: group, serializer, version, create ('1'/'0').  Returns {serializer or nil, whether
# the stream and its group exist}.
_SETUP = """
local group = ARGV[1]
if ARGV[4] == '1' then
  local made = redis.pcall('XGROUP', 'CREATE', S, group, '0', 'MKSTREAM')
  if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
    return redis.error_reply(made.err)
  end
  redis.call('HSETNX', M, 'serializer', ARGV[2])
  redis.call('HSETNX', M, 'version', ARGV[3])
end
local groups = redis.pcall('XINFO', 'GROUPS', S)
local found = 0
if type(groups) == 'table' and not groups.err then
  for _, g in ipairs(groups) do
    if fields(g).name == group then found = 1 end
  end
end
return {redis.call('HGET', M, 'serializer'), found}
"""

# ARGV: quadruples key, id, payload, delay_ms.  Returns how many were new.
_ENQUEUE = """
local now, stored = now_ms(), 0
for n = 1, #ARGV, 4 do
  local key, delay = ARGV[n], tonumber(ARGV[n + 3])
  if redis.call('ZADD', J, 'NX', now, key) == 1 then
    stored = stored + 1
    if delay > 0 then
      park(key, ARGV[n + 1], ARGV[n + 2], 0, 0, now + delay)
    else
      redis.call('XADD', S, '*', 'k', key, 'i', ARGV[n + 1], 'p', ARGV[n + 2])
    end
  end
end
return stored
"""

# ARGV: group, consumer, limit, lease_ms, max_attempts (0: none), the dead-letter error of
# a job whose last lease ran out (a format with %d for its attempts), sweep ('1': delete
# consumers idle 10 minutes holding nothing), the claim's id (the same when a claim is
# repeated because its reply was lost).
# Returns {rows, last stream id, ms until the next delayed job or lease is due (-1: none)};
# a row is {entry id, delivery count, key, id, payload, attempts before, recovered before}.
_CLAIM = """
local group, me, limit, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_attempts, lost, claim_id = tonumber(ARGV[5]), ARGV[6], ARGV[8]
local now = now_ms()

-- A row of the reply: an entry handed over at this delivery count, with its fields.
local function row(id, deliveries, f)
  return {id, deliveries, f.k, f.i, f.p, count(f.a), count(f.r)}
end

-- This claim ran before and its reply never arrived (the connection dropped): the same
-- jobs again, at a fresh lease, rather than leave them leased to no one until the lease
-- runs out and spend an attempt of theirs.  Those taken over since are left out.
local last = redis.call('HGET', R, me)
if last and string.sub(last, 1, #claim_id + 1) == claim_id .. ' ' then
  local again = {}
  for id in string.gmatch(string.sub(last, #claim_id + 2), '%S+') do
    local p = redis.call('XPENDING', S, group, id, id, 1)[1]
    local entry = p and p[2] == me and redis.call('XRANGE', S, id, id)[1]
    if entry then
      redis.call('ZADD', L, now + lease, id)
      again[#again + 1] = row(id, p[4], fields(entry[2]))
    end
  end
  if #again > 0 then return {again, false, -1} end
end

-- Delayed jobs that are due go back into the stream, their counts kept.
for _, key in ipairs(redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 1000)) do
  local blob = redis.call('HGET', H, key)
  redis.call('ZREM', D, key)
  redis.call('HDEL', H, key)
  if blob then
    local job = cmsgpack.unpack(blob)
    add(key, job[1], job[2], job[3], job[4])
  end
end

local out, owners = {}, {}
-- Leases that ran out: taken over (the delivery count rises, so the old token is void),
-- or buried when that was the job's last attempt.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', L, id)
  local p = redis.call('XPENDING', S, group, id, id, 1)[1]
  local entry = p and redis.call('XCLAIM', S, group, me, 0, id)[1]
  if entry then
    owners[p[2]] = true
    local f = fields(entry[2])
    local attempts = count(f.a) + p[4]
    if max_attempts > 0 and attempts >= max_attempts then
      settle(group, id)
      bury(f, attempts, string.format(lost, attempts), false, now)
    else
      redis.call('ZADD', L, now + lease, id)
      out[#out + 1] = row(id, p[4] + 1, f)
    end
  end
end
-- A consumer left holding nothing (its jobs were taken over) is removed from the group.
for owner in pairs(owners) do
  if owner ~= me and #redis.call('XPENDING', S, group, '-', '+', 1, owner) == 0 then
    forget(group, owner)
  end
end

if #out < limit then
  local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', limit - #out, 'STREAMS', S, '>')
  if read then
    local deadlines = {}
    for _, entry in ipairs(read[1][2]) do
      deadlines[#deadlines + 1] = now + lease
      deadlines[#deadlines + 1] = entry[1]
      out[#out + 1] = row(entry[1], 1, fields(entry[2]))
    end
    slices(deadlines, function(...) redis.call('ZADD', L, ...) end)
  end
end
if #out > 0 then
  local record = {claim_id}
  for _, handed in ipairs(out) do record[#record + 1] = handed[1] end
  redis.call('HSET', R, me, table.concat(record, ' '))
  return {out, false, -1}
end

if ARGV[7] == '1' then
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', S, group)) do
    local info = fields(c)
    if info.name ~= me and info.pending == 0 and info.idle > 600000 then
      forget(group, info.name)
    end
  end
end
-- Nothing ready: the caller blocks on the stream after its last id, until a job is
-- added or the next delayed job or lease falls due.
local last = fields(redis.call('XINFO', 'STREAM', S))['last-generated-id']
local next_due = -1
for _, z in ipairs({D, L}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')[2]
  if first then
    local wait = math.max(tonumber(first) - now, 1)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
return {{}, last, next_due}
"""

# ARGV: group, then quadruples entry id, consumer, delivery count, key.  Returns how many
# were acknowledged.
_ACK = """
local group, ids, keys, seen = ARGV[1], {}, {}, {}
for n = 2, #ARGV, 4 do
  local id = ARGV[n]
  if not seen[id] and held(group, id, ARGV[n + 1], ARGV[n + 2]) then
    seen[id] = true
    ids[#ids + 1] = id
    keys[#keys + 1] = ARGV[n + 3]
  end
end
if #ids > 0 then
  slices(ids, function(...)
    redis.call('XACK', S, group, ...)
    redis.call('XDEL', S, ...)
    redis.call('ZREM', L, ...)
  end)
  slices(keys, function(...) redis.call('ZREM', J, ...) end)
  redis.call('INCRBY', C, #ids)
end
return #ids
"""

# ARGV: group, undo ('1': release, the claim's attempt undone), then quadruples entry id,
# consumer, delivery count, delay_ms.  The entry leaves the pending list and is added
# again (or parked until its delay is over) in the same step.  Returns how many.
_RETRY = """
local group, undo, now, moved = ARGV[1], tonumber(ARGV[2]), now_ms(), 0
for n = 3, #ARGV, 4 do
  local id, deliveries, delay = ARGV[n], tonumber(ARGV[n + 2]), tonumber(ARGV[n + 3])
  if held(group, id, ARGV[n + 1], deliveries) then
    local entry = redis.call('XRANGE', S, id, id)[1]
    settle(group, id)
    if entry then
      local f = fields(entry[2])
      local attempts = count(f.a) + deliveries - undo
      local recovered = count(f.r) + deliveries - 1
      if delay > 0 then
        park(f.k, f.i, f.p, attempts, recovered, now + delay)
      else
        add(f.k, f.i, f.p, attempts, recovered)
      end
      moved = moved + 1
    end
  end
end
return moved
"""

# ARGV: group, then sextuples entry id, consumer, delivery count, error, traceback, and
# '1' if there is a traceback ('0': the traceback argument is ignored).  Returns how many.
_DEAD_LETTER = """
local group, now, moved = ARGV[1], now_ms(), 0
for n = 2, #ARGV, 6 do
  local id, deliveries = ARGV[n], tonumber(ARGV[n + 2])
  if held(group, id, ARGV[n + 1], deliveries) then
    local entry = redis.call('XRANGE', S, id, id)[1]
    settle(group, id)
    if entry then
      local f = fields(entry[2])
      local trace = false
      if ARGV[n + 5] == '1' then trace = ARGV[n + 4] end
      bury(f, count(f.a) + deliveries, ARGV[n + 3], trace, now)
      moved = moved + 1
    end
  end
end
return moved
"""

# ARGV: group, lease_ms, then triples entry id, consumer, delivery count.
_EXTEND = """
local group, lease, now, renewed = ARGV[1], tonumber(ARGV[2]), now_ms(), 0
for n = 3, #ARGV, 3 do
  if held(group, ARGV[n], ARGV[n + 1], ARGV[n + 2]) then
    redis.call('ZADD', L, now + lease, ARGV[n])
    renewed = renewed + 1
  end
end
return renewed
"""

# ARGV: group.  Returns {stream length, claimed, claimed with the lease run out, delayed,
# delayed and due, dead, done, oldest enqueue time or nil, now} (times in ms).
_STATS = """
local now = now_ms()
local oldest = redis.call('ZRANGE', J, 0, 0, 'WITHSCORES')[2] or false
return {
  redis.call('XLEN', S),
  redis.call('XPENDING', S, ARGV[1])[1],
  redis.call('ZCOUNT', L, '-inf', now),
  redis.call('ZCARD', D),
  redis.call('ZCOUNT', D, '-inf', now),
  redis.call('XLEN', X),
  tonumber(redis.call('GET', C) or '0'),
  oldest,
  now,
}
"""

# ARGV: 'all' (the oldest 500; call again until fewer come back) or 'ids' then dead-letter
# entry ids.  A job whose key was enqueued again meanwhile is not added twice.
# Returns {dead letters requeued, ids looked at}.
_REQUEUE_DEAD = """
local ids = {}
if ARGV[1] == 'all' then
  for _, entry in ipairs(redis.call('XRANGE', X, '-', '+', 'COUNT', 500)) do ids[#ids + 1] = entry[1] end
else
  for n = 2, #ARGV do ids[#ids + 1] = ARGV[n] end
end
local now, moved = now_ms(), 0
for _, id in ipairs(ids) do
  local entry = redis.call('XRANGE', X, id, id)[1]
  if entry then
    local f = fields(entry[2])
    redis.call('XDEL', X, id)
    moved = moved + 1
    if redis.call('ZADD', J, 'NX', now, f.k) == 1 then add(f.k, f.i, f.p, 0, 0) end
  end
end
return {moved, #ids}
"""

# ARGV: 'all', or 'ids' then dead-letter entry ids.  Returns how many were deleted.
_PURGE_DEAD = """
if ARGV[1] == 'all' then
  local n = redis.call('XLEN', X)
  redis.call('DEL', X)
  return n
end
local ids = {}
for n = 2, #ARGV do ids[#ids + 1] = ARGV[n] end
local deleted = 0
slices(ids, function(...) deleted = deleted + redis.call('XDEL', X, ...) end)
return deleted
"""

# ARGV: group, consumer.  A closing handle leaves the group if it holds nothing.
_LEAVE = """
local pending = redis.pcall('XPENDING', S, ARGV[1], '-', '+', 1, ARGV[2])
if type(pending) == 'table' and not pending.err and #pending == 0 then
  redis.pcall('XGROUP', 'DELCONSUMER', S, ARGV[1], ARGV[2])
end
redis.call('HDEL', R, ARGV[2])  -- a closed handle repeats no claim
return 0
"""

#: Every script, by name, each with the shared helpers in front.
SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "setup": _SETUP,
        "enqueue": _ENQUEUE,
        "claim": _CLAIM,
        "ack": _ACK,
        "retry": _RETRY,
        "dead_letter": _DEAD_LETTER,
        "extend": _EXTEND,
        "stats": _STATS,
        "requeue_dead": _REQUEUE_DEAD,
        "purge_dead": _PURGE_DEAD,
        "leave": _LEAVE,
    }.items()
}
