"""
The Redis directory's scripts
=============================

The Lua scripts that a :class:`~wsgi_proxy_listen.cluster.RedisDirectory` runs,
each one atomic step on its namespace's keys (see the table of keys in
:mod:`wsgi_proxy_listen.cluster.redis_directory`).
"""

from __future__ import annotations

__all__ = [
    "CURRENT",
    "DELETE_IF",
    "FORGET",
    "LOCATE",
    "PUBLISH",
    "RENEW",
    "REPUBLISH",
    "WITHDRAW",
]

# Every script gets the namespace's prefix as its one key (KEYS[1], "{ns}:") and builds
# the names of the keys it touches from it: all of them carry the same hash tag, so they
# are in one slot, the prefix's, where a Redis Cluster sends the script.
_HELPERS = """
local function record(value)
    if not value then return nil end
    local ok, decoded = pcall(cjson.decode, value)
    if ok and type(decoded) == 'table' then return decoded end
    return nil
end
local function text(value)
    if type(value) == 'string' then return value end
    return ''
end
local function drop(prefix, session, owner, app)
    redis.call('del', prefix .. 'session:' .. session)
    redis.call('srem', prefix .. 'owned:' .. owner, session)
    if app ~= '' then redis.call('zrem', prefix .. 'app:' .. app, session) end
    redis.call('publish', prefix .. 'notices', session .. ' -')
end
local function now_ms()
    local now = redis.call('time')
    return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local function own(prefix, owner, owner_record, lease)
    -- The owner's lease: 1 if it was still running, 0 if it had run out (or never ran).
    local key = prefix .. 'owner:' .. owner
    local running = redis.call('set', key, owner_record, 'PX', lease, 'XX')
    if not running then redis.call('set', key, owner_record, 'PX', lease) end
    redis.call('zadd', prefix .. 'owners', now_ms() + lease, owner)
    if running then return 1 end
    return 0
end
local function forget(prefix, owner)
    for _, session in ipairs(redis.call('smembers', prefix .. 'owned:' .. owner)) do
        local found = record(redis.call('get', prefix .. 'session:' .. session))
        if found and found['owner'] == owner then
            drop(prefix, session, owner, text(found['app']))
        end
    end
    redis.call('del', prefix .. 'owned:' .. owner, prefix .. 'owner:' .. owner)
    redis.call('zrem', prefix .. 'owners', owner)
end
"""
# KEYS[1]: the prefix; ARGV: session, owner, app or '', the session's record, the join
# time, the owner's record, the lease in ms (its lease starts with its first entry).
PUBLISH = (
    _HELPERS
    + """
local prefix, session, owner, app = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('exists', prefix .. 'owner:' .. owner) == 0 then
    own(prefix, owner, ARGV[6], tonumber(ARGV[7]))
end
local key = prefix .. 'session:' .. session
local previous = record(redis.call('get', key))
redis.call('set', key, ARGV[4])
redis.call('sadd', prefix .. 'owned:' .. owner, session)
if app ~= '' then redis.call('zadd', prefix .. 'app:' .. app, ARGV[5], session) end
if previous then
    local before = text(previous['app'])
    if before ~= '' and before ~= app then
        redis.call('zrem', prefix .. 'app:' .. before, session)
    end
    local was = text(previous['owner'])
    if was ~= owner then
        redis.call('srem', prefix .. 'owned:' .. was, session)
        redis.call('publish', prefix .. 'notices', session .. ' ' .. owner)
    end
end
return 1
"""
)
# Delete a session's entry only while it is this one: the same owner and app.
# KEYS[1]: the prefix; ARGV: session, owner, app or ''.
WITHDRAW = (
    _HELPERS
    + """
local found = record(redis.call('get', KEYS[1] .. 'session:' .. ARGV[1]))
if not found or found['owner'] ~= ARGV[2] or text(found['app']) ~= ARGV[3] then return 0 end
drop(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)
# Every entry of an owner. KEYS[1]: the prefix; ARGV: the owner, and (for a refused
# connection) how long before its lease's end it last renewed, at the latest, in ms.
FORGET = (
    _HELPERS
    + """
if ARGV[2] then
    -- Across machines a refused connection proves nothing of the owner (a firewall's
    -- reject reads the same): its lease decides. An owner that renewed it within a
    -- heartbeat (a third of *its* lease) and half a second lives.
    local expires = redis.call('zscore', KEYS[1] .. 'owners', ARGV[1])
    local owned = record(redis.call('get', KEYS[1] .. 'owner:' .. ARGV[1]))
    local window = tonumber(ARGV[2])
    if owned and tonumber(owned['lease']) then
        local lease = tonumber(owned['lease'])
        window = lease - lease / 3 - 500
    end
    if expires and tonumber(expires) > now_ms() + window then return 0 end
end
forget(KEYS[1], ARGV[1])
return 1
"""
)
# Renew the owner's lease (1 if it was still running, 0 if it had run out), and clean up
# after a few owners whose lease ran out. The time is the server's: every process agrees.
# KEYS[1]: the prefix; ARGV: owner, its record, the lease in ms.
RENEW = (
    _HELPERS
    + """
local prefix = KEYS[1]
local running = own(prefix, ARGV[1], ARGV[2], tonumber(ARGV[3]))
local silent = redis.call('zrangebyscore', prefix .. 'owners', '-inf', now_ms(), 'LIMIT', 0, 16)
for _, dead in ipairs(silent) do
    if redis.call('exists', prefix .. 'owner:' .. dead) == 0 then forget(prefix, dead) end
end
return running
"""
)
# Write an owner's entries again where they are missing; the sessions that another owner
# holds now are returned. KEYS[1]: the prefix; ARGV: the owner, the join time, then the
# session, its app or '' and its record, for each.
REPUBLISH = (
    _HELPERS
    + """
local prefix, owner, now = KEYS[1], ARGV[1], ARGV[2]
local taken = {}
for i = 3, #ARGV, 3 do
    local session, app = ARGV[i], ARGV[i + 1]
    local found = record(redis.call('get', prefix .. 'session:' .. session))
    if found and found['owner'] ~= owner then
        table.insert(taken, session)
    else
        if not found then
            redis.call('set', prefix .. 'session:' .. session, ARGV[i + 2])
            if app ~= '' then redis.call('zadd', prefix .. 'app:' .. app, now, session) end
        end
        redis.call('sadd', prefix .. 'owned:' .. owner, session)
    end
end
return taken
"""
)
# A session's record and its owner's, while the owner's lease runs. KEYS[1]: the prefix;
# ARGV: the session.
LOCATE = (
    _HELPERS
    + """
local value = redis.call('get', KEYS[1] .. 'session:' .. ARGV[1])
local found = record(value)
if not found then return value end
local owner = redis.call('get', KEYS[1] .. 'owner:' .. text(found['owner']))
if not owner then return nil end
return {value, owner}
"""
)
# The newest member of an app whose owner's lease runs: {session, record, owner record};
# members whose entry is gone or in another app leave the app. KEYS[1]: the prefix;
# ARGV: the slug, and an owner to pass over ('' for none).
CURRENT = (
    _HELPERS
    + """
local prefix, slug, skip = KEYS[1], ARGV[1], ARGV[2]
local members = prefix .. 'app:' .. slug
for _, session in ipairs(redis.call('zrevrange', members, 0, 15)) do
    local value = redis.call('get', prefix .. 'session:' .. session)
    local found = record(value)
    if found and text(found['app']) == slug then
        local owner = redis.call('get', prefix .. 'owner:' .. text(found['owner']))
        if owner and text(found['owner']) ~= skip then return {session, value, owner} end
    elseif value == false or found then
        redis.call('zrem', members, session)
    end
end
return nil
"""
)
DELETE_IF = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
