"""The Lua scripts that make each multi-key Redis operation of the store atomic.

Every script starts with a ``#!lua`` shebang (Redis 7): the server then checks for
out-of-memory before the script runs, so a script can never stop half-way through
with some of its writes applied (a seen id without its queue entry, say).
Every key a script touches is passed in KEYS.
"""

from __future__ import annotations

# KEYS[1] articles stream, KEYS[2..n] seen:<article id>
# ARGV[1] retention ms, ARGV[2..n] article JSON (same order as the seen keys)
# Returns the 0-based positions of the articles admitted. A repeat sighting slides the TTL.
ADMIT = """#!lua
local admitted = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'article', ARGV[i])
    admitted[#admitted + 1] = i - 2
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return admitted
"""

# KEYS[1] articles stream, KEYS[2] dead-letter stream
# ARGV group, consumer, min idle ms, count, max deliveries, dead-letter max length
# Returns stream entries [id, [field, value...]]: reclaimed stale ones first, then new ones.
CLAIM = """#!lua
local stream, dead, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local idle, count, max = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
-- recreate the group if the stream was lost (a restart without persistence)
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
local out, stale = {}, {}
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', idle, '-', '+', count)) do
  if p[4] >= max then
    local e = redis.call('XRANGE', stream, p[1], p[1])
    if e[1] then
      redis.call('XADD', dead, 'MAXLEN', '~', ARGV[6], '*',
        'entry', p[1], 'deliveries', p[4], unpack(e[1][2]))
    end
    redis.call('XACK', stream, group, p[1])
    redis.call('XDEL', stream, p[1])
  else
    stale[#stale + 1] = p[1]
  end
end
if #stale > 0 then
  for _, e in ipairs(redis.call('XCLAIM', stream, group, consumer, idle, unpack(stale))) do
    if e and e[2] then out[#out + 1] = e end
  end
end
if #out < count then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out,
    'STREAMS', stream, '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do out[#out + 1] = e end
  end
end
return out
"""

# KEYS[1] stream; ARGV group, consumer. A restarted replica (same name) gives back what its
# previous life claimed: those pending entries are marked idle for a day, so the next claim
# (by anyone) takes them at once. Returns how many.
RELEASE = """#!lua
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
local args = {stream, group, consumer, 0}
for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', 10000, consumer)) do
  args[#args + 1] = p[1]
end
local n = #args - 4
if n > 0 then
  -- (unpack must come last in a Lua call, so the options go into the same table)
  args[#args + 1] = 'IDLE'
  args[#args + 1] = 86400000
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return n
"""

# Shared by the outbox scripts: forget done ids older than the idempotency window.
# KEYS[1] items hash, KEYS[2] state hash, done zset passed as an argument.
_PRUNE_DONE = """
local function prune_done(done, before)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', done, '-inf', before, 'LIMIT', 0, 100)) do
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', done, id)
  end
end
"""

# KEYS items, state, due, dead, done
# ARGV[1] now ms, ARGV[2] prune done before ms, then groups of id, delivery JSON, state JSON,
# status, next_at ms. Returns how many ids were new (HSETNX: an existing id is left as is).
OUTBOX_PUT = "#!lua\n" + _PRUNE_DONE + """
prune_done(KEYS[5], ARGV[2])
local added = 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    local status = ARGV[i + 3]
    if status == 'pending' then redis.call('ZADD', KEYS[3], ARGV[i + 4], id)
    elseif status == 'dead' then redis.call('SADD', KEYS[4], id)
    else redis.call('ZADD', KEYS[5], ARGV[1], id) end
    added = added + 1
  end
end
return added
"""

# KEYS items, state, due. ARGV now ms, lease until ms, count, owner.
# The due zset scores a pending id by max(next attempt, lease end), so "score <= now" is
# exactly "due and not leased": the lease is taken by moving the score to the lease end.
# Returns pairs: delivery JSON, state JSON.
OUTBOX_DUE = """#!lua
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  local raw, item = redis.call('HGET', KEYS[2], id), redis.call('HGET', KEYS[1], id)
  local state = raw and cjson.decode(raw)
  if item and state and state.status == 'pending' then
    state.owner, state.lease_until = ARGV[4], tonumber(ARGV[2])
    raw = cjson.encode(state)
    redis.call('HSET', KEYS[2], id, raw)
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    out[#out + 1] = item
    out[#out + 1] = raw
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
return out
"""

# KEYS items, state, due, dead, done
# ARGV op ('done' | 'retry' | 'dead' | 'requeue'), id, now ms, next_at ms, error,
# prune done before ms. Returns 1 if the entry changed. Done is final: nothing undoes it.
OUTBOX_MOVE = "#!lua\n" + _PRUNE_DONE + """
local op, id = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[2], id)
if not raw then return 0 end
local state = cjson.decode(raw)
if op == 'done' then
  state.status = 'done'
  redis.call('ZREM', KEYS[3], id)
  redis.call('SREM', KEYS[4], id)
  redis.call('ZADD', KEYS[5], ARGV[3], id)
  prune_done(KEYS[5], ARGV[6])
elseif state.status == 'done' then
  return 0
elseif op == 'retry' then
  if state.status ~= 'pending' then return 0 end
  state.attempts, state.next_at, state.last_error = state.attempts + 1, tonumber(ARGV[4]), ARGV[5]
  redis.call('ZADD', KEYS[3], ARGV[4], id)
elseif op == 'dead' then
  state.status, state.last_error = 'dead', ARGV[5]
  redis.call('ZREM', KEYS[3], id)
  redis.call('SADD', KEYS[4], id)
elseif op == 'requeue' then
  state.status, state.attempts, state.next_at = 'pending', 0, tonumber(ARGV[4])
  redis.call('SREM', KEYS[4], id)
  redis.call('ZADD', KEYS[3], ARGV[4], id)
else
  return redis.error_reply('unknown outbox op ' .. op)
end
state.owner, state.lease_until = '', 0
redis.call('HSET', KEYS[2], id, cjson.encode(state))
return 1
"""

# KEYS[1] lease key. ARGV owner, ttl ms. Take a free lease or renew one's own.
LEASE_ACQUIRE = """#!lua
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease key. ARGV owner. Delete only one's own lease.
LEASE_RELEASE = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS index zset (id -> created), data hash (id -> JSON)
# ARGV id, created seconds, payload, prune before seconds.
SAVE_ALERT = """#!lua
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4],
    'LIMIT', 0, 100)) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""
