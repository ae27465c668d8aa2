"""The queue contract's Lua scripts: each state transition of a request, atomic in Redis (see `queue`)."""

from tiffin.contracts.coldstart import MARK_FUNCTION

# KEYS: queue, request state, activity, api registry, runner registry, waking, cold-start phases.
# ARGV: max waiting, group, state ttl s, now ms, deployment, wake channel, waking ttl ms, request id,
# accept until (epoch ms, or ''), arrival (epoch ms by Redis's clock), fields...
# The waking mark holds the id of the request that started the cold start, so only that request ends it; the
# phases hash beside it starts afresh with it (see tiffin.contracts.coldstart).
# Returns false (full) or {entry id, 0 warm | 1 cold | 2 cold and this request started the wake}. The wake is
# published in the same script as the enqueue, so a scaler's open StreamIsActive hears it at once.
# Idempotent: a request whose state exists already was enqueued by an earlier try (a reply lost to a timeout,
# then retried), so it is never queued twice; the earlier entry is returned as warm.
# Run after "accept until" (Redis was paused or slow, and the caller has given up waiting for this reply), it
# queues nothing and returns {'', -1}: the caller has answered 503, and no replica must serve it.
ENQUEUE = """
local seen = redis.call('HGET', KEYS[2], 'entry')
if seen then return {seen, 0} end
if ARGV[9] ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[9]) then return {'', -1} end
end
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local ok, info = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[2])
if ok and type(info) == 'table' then pending = info[1] end
if len - pending >= tonumber(ARGV[1]) then return false end
redis.call('HSET', KEYS[2], 'state', 'queued')
redis.call('EXPIRE', KEYS[2], ARGV[3])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 11))
redis.call('HSET', KEYS[2], 'entry', id)
redis.call('SET', KEYS[3], ARGV[4])
local now = tonumber(ARGV[4])
local cold = 0
if redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') == 0 or redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf') == 0 then
  cold = 1
  if redis.call('SET', KEYS[6], ARGV[8], 'NX', 'PX', ARGV[7]) then
    cold = 2
    redis.call('DEL', KEYS[7])
    redis.call('HSET', KEYS[7], 'rid', ARGV[8], 'arrived', ARGV[10])
    redis.call('PEXPIRE', KEYS[7], ARGV[7])
  end
  redis.call('PUBLISH', ARGV[6], ARGV[5])
end
return {id, cold}
"""

# KEYS: request state, queue, cancel channel. ARGV[1]: entry id; ARGV[2]: '1' to cancel even a taken request
# (client gone), '0' only a queued one; ARGV[3]: request id, published when a proxy holds the request.
# The state's own entry id wins over ARGV[1]: a released request was queued again under a new id.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('XDEL', KEYS[2], redis.call('HGET', KEYS[1], 'entry') or ARGV[1])
  return 'cancelled'
end
if (st == 'taken' or st == 'started') and ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('PUBLISH', KEYS[3], ARGV[3])
  return 'cancelled'
end
return st
"""

# KEYS: request state, saved result, waking mark, cold-start phases[, reply stream]. ARGV: owner, now ms, request id.
# 'done': taken, and a runner already answered it (answer from the record). 'orphaned': taken, but the reply stream
# given is gone (its interceptor died: nobody waits for the answer). Taking the request that woke the deployment
# marks the cold start's `dispatched` phase here, so a warm request pays no extra round trip.
TAKE = (
    MARK_FUNCTION
    + """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'queued' or st == 'taken' then
  redis.call('HSET', KEYS[1], 'state', 'taken', 'owner', ARGV[1], 'taken_ms', ARGV[2])
  mark_phase(KEYS[3], KEYS[4], 'dispatched', ARGV[3])
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'done' end
  if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 0 then return 'orphaned' end
  return 'taken'
end
return st
"""
)

# The fence in front of every first write of a reply (START, ANSWER): only the request's current owner, and only
# while it is 'taken'; its owner calling again after an unknown outcome is told 'started' and writes nothing twice;
# 'gone' when its interceptor's reply stream is. KEYS[1]: request state, KEYS[2]: reply stream; ARGV[1]: owner.
_FENCE = """
local st = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'owner')
if st == 'started' and owner == ARGV[1] then return 'started' end
if st ~= 'taken' or owner ~= ARGV[1] then return 'lost' end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'gone' end
"""

# Fenced start: only the request's current owner, and only while it is 'taken', writes the head frame. A proxy
# wrongly thought dead (its request reclaimed by another) or a cancelled request's proxy gets 'lost' and stops.
# The owner calling again (after an unknown outcome) is told 'started' without a second head frame.
# KEYS: request state, reply stream. ARGV: owner, reply stream maxlen, head frame fields...
START = (
    _FENCE
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('HSET', KEYS[1], 'state', 'started')
return 'started'
"""
)

# Claim one pending entry only if ARGV[4] still owns it: a racing reclaimer that got there first has
# changed the owner, so the entry is never handed out twice (XCLAIM's min-idle-time alone cannot promise
# that when the observed idle time is small). An entry deleted while pending (cancelled while queued) is
# acknowledged instead of claimed. Returns nil (not claimed), {} (cleaned up) or {id, {field, value, ...}}.
CLAIM = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[4] then return false end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if not claimed[1] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return {}
end
return claimed[1]
"""


# A whole non-streamed answer in one step: head, chunks and end written, the request marked started, its entry
# acknowledged and its saved result dropped, all or nothing; so a retry after an unknown outcome (Redis lost the
# connection mid-call) is safe: the owner finding it started already is told 'started' again, and nothing is
# written twice. KEYS: request state, reply stream, queue, saved result, activity.
# ARGV: owner, reply stream maxlen, group, entry id, now ms, frame count, then per frame: field count, fields...
ANSWER = (
    _FENCE
    + """
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
redis.call('HSET', KEYS[1], 'state', 'started')
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5])
return 'started'
"""
)


# A stream's last frame, its entry acknowledged and deleted, its saved result dropped and the activity mark set:
# one command (one reply, and one a batching client can send with others), atomic like the transaction it
# replaces. The frame is never written to a reply stream that is gone (returns 0), the rest is done all the same.
# KEYS: reply stream, queue, saved result, activity. ARGV: reply stream maxlen, group, entry id, now ms, fields...
END = """
local written = redis.call('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[4])
if written then return 1 end
return 0
"""

# Put a taken request back in the queue, unserved (its API server is shutting down and refused it).
# KEYS: queue, request state. ARGV: group, entry id, consumer, fields... Only the request's owner may, and
# only before a head frame: once started it can never be replayed. Returns the new entry id, or false.
RELEASE = """
if redis.call('HGET', KEYS[2], 'state') ~= 'taken' or redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then
  return false
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('HSET', KEYS[2], 'state', 'queued', 'entry', id)
redis.call('HDEL', KEYS[2], 'owner', 'taken_ms')
return id
"""


# A runner's whole answer saved, and its expiry set, in one command (one reply to read, and one that a batching
# client can send with others): atomic like the transaction it replaces. KEYS: saved result.
# ARGV: ttl s, status, headers (JSON), body.
SAVE_RESULT = """
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
