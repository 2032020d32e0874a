"""Lua scripts: every state change of a job in Redis is one atomic script (serving.md "Redis layout").

The invariant they keep together: a job reaches exactly one terminal status, and that one transition
(and only it) releases the job's tiles from `{prefix}:backlog`, acknowledges and deletes its stream
entry and notifies the API replica waiting for it. A late duplicate (a reclaimed job finished twice,
an expiry racing a completion) finds a terminal status and only acknowledges. A stream entry whose
hash is gone (TTL) releases the cost it carries itself, so the backlog cannot leak.

Key names come from service.queue.keys; the reply stream name is built here from its prefix because
the API replica is only known from the job hash (single Redis instance, not Redis Cluster).
"""

from __future__ import annotations

_PRELUDE = """
-- Release one stored result (result store: KEYS store, sizes, bytes): 1 if it was stored.
local function drop_result(store, sizes, total, job_prefix, out_prefix, job_id, reason)
  if redis.call('ZREM', store, job_id) == 0 then return 0 end
  redis.call('DECRBY', total, redis.call('HGET', sizes, job_id) or '0')
  redis.call('HDEL', sizes, job_id)
  redis.call('DEL', out_prefix .. job_id)
  local job = job_prefix .. job_id
  if redis.call('EXISTS', job) == 1 then redis.call('HSET', job, 'gone', reason) end
  return 1
end

local function is_terminal(status)
  return status == 'done' or status == 'failed' or status == 'expired' or status == 'cancelled'
end

local function ack(stream, group, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

-- An entry whose job hash is gone: release the cost it carries (if it still exists), ack it.
local function drop_orphan(stream, group, backlog, entry)
  local found = redis.call('XRANGE', stream, entry, entry)
  if found[1] then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'cost' then redis.call('DECRBY', backlog, fields[i + 1]) end
    end
  end
  ack(stream, group, entry)
end

-- The single terminal transition. Returns 1 if it happened, 0 if the job had already ended, -1 if unknown.
local function finish(job, input, backlog, stream, group, reply_prefix, job_id, status, code, message, now, ttl)
  local current = redis.call('HGET', job, 'status')
  if not current then return -1 end
  local entry = redis.call('HGET', job, 'entry')
  if is_terminal(current) then
    if entry then ack(stream, group, entry) end
    return 0
  end
  redis.call('HSET', job, 'status', status, 'error_code', code, 'error_message', message, 'finished', now)
  redis.call('DECRBY', backlog, redis.call('HGET', job, 'cost'))
  if entry then ack(stream, group, entry) end
  redis.call('EXPIRE', job, ttl)
  redis.call('DEL', input)
  local api = redis.call('HGET', job, 'api')
  if api then
    local reply = reply_prefix .. api
    redis.call('XADD', reply, 'MAXLEN', '~', 10000, '*', 'id', job_id, 'status', status)
    redis.call('EXPIRE', reply, 3600)
  end
  return 1
end
"""

#: KEYS: backlog, jobs stream, job hash, input, idempotency key.
#: ARGV: id, cost, limit, deadline, created, input bytes, ttl, api, use_idem, idem ttl, fingerprint,
#: group, job key prefix, then params as field/value pairs.
#: Returns {'ok', backlog} | {'full', backlog} | {'dup', id, fp}. A key whose job record has expired
#: (results live shorter than keys) admits the request as new.
ADMIT = """
if ARGV[9] == '1' then
  local known = redis.call('GET', KEYS[5])
  if known then
    local space = string.find(known, ' ', 1, true)
    local known_id = string.sub(known, 1, space - 1)
    local known_job = ARGV[13] .. known_id
    if redis.call('EXISTS', known_job) == 1 and redis.call('HEXISTS', known_job, 'gone') == 0 then
      return {'dup', known_id, string.sub(known, space + 1)}
    end
  end
end
local backlog = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'ok', tostring(backlog)}  -- a retried admission of the same job: already in
end
local cost = tonumber(ARGV[2])
if backlog > 0 and backlog + cost > tonumber(ARGV[3]) then
  return {'full', tostring(backlog)}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[12], '0', 'MKSTREAM')
end
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'cost', ARGV[2], 'deadline', ARGV[4])
redis.call('HSET', KEYS[3], 'status', 'queued', 'cost', ARGV[2], 'deadline', ARGV[4], 'created', ARGV[5],
  'api', ARGV[8], 'entry', entry, 'attempts', '0')
for i = 14, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
if ARGV[9] == '1' then
  redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[11], 'EX', ARGV[10])
end
redis.call('INCRBY', KEYS[1], cost)
return {'ok', tostring(backlog + cost)}
"""

#: KEYS: job hash, input, backlog, jobs stream.
#: ARGV: entry id, group, now, worker, reply prefix, job id, ttl.
#: Returns {'run', input, attempts} | {'ended', status} | {'gone'} | {'expired'} | {'noinput'}.
START = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  drop_orphan(KEYS[4], ARGV[2], KEYS[3], ARGV[1])
  return {'gone'}
end
if is_terminal(status) then
  ack(KEYS[4], ARGV[2], ARGV[1])
  return {'ended', status}
end
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) <= tonumber(ARGV[3]) then
  finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[5], ARGV[6], 'expired', 'deadline',
    'the deadline passed in the queue', ARGV[3], ARGV[7])
  return {'expired'}
end
local data = redis.call('GET', KEYS[2])
if not data then return {'noinput'} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[4], 'started', ARGV[3])
return {'run', data, tostring(attempts)}
"""
)

#: KEYS: job hash, input, backlog, jobs stream.
#: ARGV: group, reply prefix, job id, status, code, message, now, ttl.
FINISH = (
    _PRELUDE
    + """
return finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8])
"""
)

#: KEYS: job hash, input, backlog, jobs stream, output, then the result store (RedisKeys.store_keys).
#: ARGV: group, reply prefix, job id, now, ttl, result bytes, job key prefix, output key prefix, then
#: timing fields as field/value pairs. The result joins the store; while the store passes its cap the
#: oldest others are evicted (serving.md "Result retention"). The record outlives the result by a TTL.
COMPLETE = (
    _PRELUDE
    + """
local done = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], 'done', '', '', ARGV[4],
  ARGV[5])
if done == 1 then
  redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[5])
  for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[5]))
  redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
  redis.call('HSET', KEYS[7], ARGV[3], string.len(ARGV[6]))
  local total = redis.call('INCRBY', KEYS[8], string.len(ARGV[6]))
  local cap = tonumber(redis.call('GET', KEYS[9]) or '-1')
  while cap >= 0 and total > cap do
    local oldest = redis.call('ZRANGE', KEYS[6], 0, 0)[1]
    if not oldest or oldest == ARGV[3] then break end
    drop_result(KEYS[6], KEYS[7], KEYS[8], ARGV[7], ARGV[8], oldest, 'store_full')
    total = tonumber(redis.call('GET', KEYS[8]))
  end
end
return done
"""
)

#: KEYS: the result store (RedisKeys.store_keys), job hash. ARGV: job id, reason, record ttl, job key
#: prefix, output key prefix. A delivered result leaves the store; its record stays `record ttl` s.
RELEASE = (
    _PRELUDE
    + """
local released = drop_result(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[1], ARGV[2])
if released == 1 and redis.call('TTL', KEYS[5]) > tonumber(ARGV[3]) then
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
return released
"""
)

#: KEYS: the result store (RedisKeys.store_keys). ARGV: cutoff time, job key prefix, output key prefix,
#: most entries per call, cap in bytes. Expires results finished before the cutoff (their bytes have
#: a Redis TTL too; this keeps the accounting exact) and publishes the cap. Returns how many it dropped.
SWEEP = (
    _PRELUDE
    + """
redis.call('SET', KEYS[4], ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, job_id in ipairs(old) do
  drop_result(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], job_id, 'expired')
end
return #old
"""
)

#: KEYS: job hash. ARGV: tiles done, eta (empty: unknown). Only a running job's record changes (a
#: report racing the completion must not resurrect an expired hash).
PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'tiles_done', ARGV[1], 'eta_s', ARGV[2])
return 1
"""

#: KEYS: job hash, input, backlog, jobs stream, dead stream.
#: ARGV: group, reply prefix, job id, now, ttl, entry id, deliveries, reason.
#: Returns 1 when the job went to the dead stream, 0 when it had already ended (or was unknown).
DEAD = (
    _PRELUDE
    + """
local result = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], 'failed', 'dead',
  ARGV[8], ARGV[4], ARGV[5])
if result == -1 then
  drop_orphan(KEYS[4], ARGV[1], KEYS[3], ARGV[6])
else
  ack(KEYS[4], ARGV[1], ARGV[6])
end
if result ~= 1 then return 0 end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', 10000, '*', 'id', ARGV[3], 'entry', ARGV[6],
  'deliveries', ARGV[7], 'reason', ARGV[8], 'time', ARGV[4])
return 1
"""
)

#: KEYS: jobs stream. ARGV: group, consumer, entry ids... Resets the idle time of the entries this
#: consumer still owns (XCLAIM JUSTID does not count a delivery); entries a reaper already took
#: elsewhere are left alone. Returns how many were refreshed.
REFRESH = """
local refreshed = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    refreshed = refreshed + 1
  end
end
return refreshed
"""
