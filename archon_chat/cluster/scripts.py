"""The Lua scripts that make each cluster decision one atomic Redis step.

Keys (each under the cluster's ``redis_prefix``)::

    nodes               set: every node that announced itself (the reaper prunes dead ones)
    alive:{node}        string, expires after the lease: the node's heartbeat
    lease:{session}     string "{node} {epoch}", expires after the lease: the session's owner
    room:{session}      hash node -> "c" (connected members there) | "g" (only members in
                        their disconnect grace): who watches the session
    turns:{node}        hash session -> "1": the node's turns in flight (a dead node's are
                        failed by whoever reaps it)
    reap:{node}         string, expires after the lease: who is reaping a dead node
    node:{node}         pub/sub channel: the node's inbox

An owner's *epoch* is Redis's clock in microseconds when it took the lease: it only grows
from one owner to the next (even after Redis lost its keys), so a node receiving events
drops those of an owner older than the newest it has seen.
"""

from __future__ import annotations

#: KEYS lease, room; ARGV node, lease_ms, force ("1": take over a lease held under our
#: own name by an earlier run). {1, epoch, watchers} or {0, current value}.
TAKE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^(%S+)')
  if owner ~= ARGV[1] or ARGV[3] ~= '1' then return {0, cur} end
end
local t = redis.call('TIME')
local epoch = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return {1, epoch, redis.call('HKEYS', KEYS[2])}
"""

#: KEYS alive, nodes, lease...; ARGV node, lease_ms, epoch... .
#: {heartbeat was missing (0/1), index (1-based) of every lease held by someone else...}.
#: A lease that vanished (Redis restarted) is taken again under the same epoch.
RENEW = """
local missing = 0
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[2], 'XX') == false then
  missing = 1
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
local out = {missing}
for i = 3, #KEYS do
  local mine = ARGV[1] .. ' ' .. ARGV[i]
  local cur = redis.call('GET', KEYS[i])
  if cur == mine then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  elseif cur == false then
    redis.call('SET', KEYS[i], mine, 'PX', ARGV[2])
  else
    table.insert(out, i - 2)
  end
end
return out
"""

#: KEYS lease; ARGV "{node} {epoch}". Deletes the lease if it is still that one.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS room, lease; ARGV node, ttl_ms. Registers a watcher; the lease's value (or false).
WATCH = """
redis.call('HSET', KEYS[1], ARGV[1], 'c')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[2])
"""

#: KEYS room, lease; ARGV node, mode ("g": only members in grace left here, "-": none),
#: prefix. {1 if no live node has a connected member, the lease's value or false}.
LEFT = """
if ARGV[2] == 'g' then
  redis.call('HSET', KEYS[1], ARGV[1], 'g')
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local nobody = 1
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == 'c' and redis.call('EXISTS', ARGV[3] .. 'alive:' .. all[i]) == 1 then
    nobody = 0
    break
  end
end
return {nobody, redis.call('GET', KEYS[2])}
"""


def parse_lease(value: object) -> tuple[str, int] | None:
    """``(node, epoch)`` of a lease value, ``None`` for no lease or a malformed one."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    node, _, epoch = value.partition(" ")
    if not node or not epoch.isdigit():
        return None
    return node, int(epoch)
