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

# Shared by OUTBOX_DUE and OUTBOX_MOVE. KEYS[2] state hash, KEYS[4] ready stream; GROUP set
# by the script. A state records the one stream entry (``entry``) that may deliver its id.
_OUTBOX_STATE = """
local function load(id)
  local raw = redis.call('HGET', KEYS[2], id)
  return raw and cjson.decode(raw)
end
local function save(id, state)
  state.owner, state.lease_until = nil, nil  -- lease fields of the zset-only outbox
  local raw = cjson.encode(state)
  redis.call('HSET', KEYS[2], id, raw)
  return raw
end
local function drop(entry)
  redis.call('XACK', KEYS[4], GROUP, entry)
  redis.call('XDEL', KEYS[4], entry)
end
-- take an id's live entry (if any) out of the stream: at most one live entry per id
local function unlist(state)
  if state.entry and state.entry ~= '' then drop(state.entry) end
  state.entry = ''
end
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
end
"""

# KEYS items, state, due, done
# ARGV[1] now ms, ARGV[2] prune done before ms, then groups of id, delivery JSON, state JSON,
# status, next_at ms. Returns how many ids were new (HSETNX: an existing id is left as is).
# A pending delivery waits in the due zset, even if due now: OUTBOX_DUE moves it on.
OUTBOX_PUT = "#!lua\n" + _PRUNE_DONE + """
prune_done(KEYS[4], ARGV[2])
local added = 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    local status = ARGV[i + 3]
    if status == 'pending' then redis.call('ZADD', KEYS[3], ARGV[i + 4], id)
    elseif status == 'done' then redis.call('ZADD', KEYS[4], ARGV[1], id) end
    added = added + 1
  end
end
return added
"""

# KEYS items, state, due, ready stream, dead-letter stream
# ARGV group, owner, now ms, lease ms, count, max deliveries, dead-letter max length,
# most ids to move from the zset per call.
# 1. ids due by ``now`` move from the zset to the stream (entry id kept in the state);
# 2. entries idle past the lease and handed out max times are dead-lettered (the sender
#    crashed on each); 3. the other idle ones (a dead consumer's) are XAUTOCLAIMed by owner;
# 4. XREADGROUP reads new entries for the rest of ``count``. An entry that is no longer its
# id's live entry (done, dead, requeued since) is acked and dropped.
# Returns pairs: delivery JSON, state JSON.
OUTBOX_DUE = "#!lua\nlocal GROUP = ARGV[1]\n" + _OUTBOX_STATE + """
local owner, now, idle, count = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local max, maxlen = tonumber(ARGV[6]), ARGV[7]
redis.pcall('XGROUP', 'CREATE', KEYS[4], GROUP, '0', 'MKSTREAM')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, ARGV[8])) do
  redis.call('ZREM', KEYS[3], id)
  local state = load(id)
  if state and state.status == 'pending' then
    unlist(state)
    state.entry = redis.call('XADD', KEYS[4], '*', 'id', id)
    save(id, state)
  end
end
local stale = 0
for _, p in ipairs(redis.call('XPENDING', KEYS[4], GROUP, 'IDLE', idle, '-', '+', count)) do
  if p[4] >= max then
    local e = redis.call('XRANGE', KEYS[4], p[1], p[1])[1]
    local id = e and field(e, 'id')
    local state = id and load(id)
    if state and state.status == 'pending' and state.entry == p[1] then
      local err = 'delivered ' .. p[4] .. ' times without an ack (sender crashed each time?)'
      state.status, state.attempts, state.last_error = 'dead', state.attempts + p[4], err
      state.entry = ''
      save(id, state)
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'id', id, 'deliveries', p[4],
        'attempts', state.attempts, 'error', err)
    end
    drop(p[1])
  else
    stale = stale + 1
  end
end
local got = {}
if stale > 0 then
  local claimed = redis.call('XAUTOCLAIM', KEYS[4], GROUP, owner, idle, '0-0', 'COUNT', stale)
  for _, e in ipairs(claimed[2]) do
    if type(e) == 'table' and e[2] then got[#got + 1] = e end
  end
end
if #got < count then
  local fresh = redis.call('XREADGROUP', 'GROUP', GROUP, owner, 'COUNT', count - #got,
    'STREAMS', KEYS[4], '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do got[#got + 1] = e end
  end
end
local out = {}
for _, e in ipairs(got) do
  local id = field(e, 'id')
  local state = id and load(id)
  local item = id and redis.call('HGET', KEYS[1], id)
  if item and state and state.status == 'pending' and state.entry == e[1] then
    out[#out + 1] = item
    out[#out + 1] = cjson.encode(state)
  else
    drop(e[1])
  end
end
return out
"""

# KEYS items, state, due, ready stream, dead-letter stream, done
# ARGV group, op ('done' | 'retry' | 'dead' | 'requeue'), id, now ms, next_at ms, error,
# prune done before ms, dead-letter max length. Every op first takes the id's live stream
# entry out (XACK + XDEL) and the id out of the due zset, so an id is never listed twice.
# Returns 1 if the entry changed. Done is final: nothing undoes it; dead is undone by requeue.
OUTBOX_MOVE = "#!lua\nlocal GROUP = ARGV[1]\n" + _PRUNE_DONE + _OUTBOX_STATE + """
local op, id = ARGV[2], ARGV[3]
local state = load(id)
if not state then return 0 end
if op == 'done' then
  state.status = 'done'
  redis.call('ZADD', KEYS[6], ARGV[4], id)
  prune_done(KEYS[6], ARGV[7])
elseif state.status == 'done' then
  return 0
elseif op == 'retry' or op == 'dead' then
  if state.status ~= 'pending' then return 0 end
  -- the attempt that just failed counts, whether it is retried or dead-lettered
  state.attempts, state.last_error = state.attempts + 1, ARGV[6]
  if op == 'retry' then
    state.next_at = tonumber(ARGV[5])
    redis.call('ZADD', KEYS[3], ARGV[5], id)
  else
    state.status = 'dead'
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'id', id,
      'attempts', state.attempts, 'error', ARGV[6])
  end
elseif op == 'requeue' then
  state.status, state.attempts, state.next_at = 'pending', 0, tonumber(ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[5], id)
else
  return redis.error_reply('unknown outbox op ' .. op)
end
if op ~= 'retry' and op ~= 'requeue' then redis.call('ZREM', KEYS[3], id) end
unlist(state)
save(id, state)
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
