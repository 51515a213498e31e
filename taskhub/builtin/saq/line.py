"""The waiting line of one queue shard: every push to it and every take from it, in Lua.

One snippet, spliced into every script that queues or takes a job (admission's
enqueue, the worker's step, the schedule upkeep), so the line's keys stay
consistent whoever touches them. Keys, all under the shard's ``saq:<queue>:``
prefix so a tagged (cluster) shard keeps them in its hash slot:

- ``queued``: SAQ's list, FIFO. With ``fairness: none`` default-priority jobs wait
  here exactly as before; with ``user`` it only drains (jobs an earlier version, or
  fairness none, queued).
- ``prio``: with ``none``, jobs of another priority than 0, one sorted set for all
  users: those above 0 are taken before the list, those below after it. Idle workers
  wait on the list (``BLMOVE queued active``), so a job put in ``prio`` while the list
  is empty also puts ``wake`` there: a token, never a key, that wakes one idle worker
  (whose take drops it like any listed id without a job, then takes from ``prio``);
  each such take that leaves ``prio`` non-empty wakes the next one the same way.
- ``ring``: with ``user``, a list of the users with queued jobs, each once; the
  head's turn it is. An idle worker waits with ``BLMOVE ring waking``: a user on the
  ring wakes one worker (not all of them), whose take puts him back first.
- ``line:<user>``: with ``user``, that user's jobs, a sorted set ordered by
  priority, then by arrival (``seq``).
- ``backlog``: sorted set user -> jobs in his line (the ring's membership test and the
  dashboard's top users); ``lined``: all users' lines together (depth, O(1)).
- ``credit``: hash user -> takes left in his current turn (weights above 1).
- ``weights``: hash user -> takes per turn (absent: 1).

A score is ``(PMAX - priority) * BAND + HALF +/- seq``: higher priority first, then
first in first out; a job put back at the front (``-seq``) goes before the others
of its priority. Every take is O(log n) in one line plus O(1) ring work, whatever
the number of users.
"""

from __future__ import annotations

from taskhub.jobs import MAX_PRIORITY

FAIR = "user"
FIFO = "none"
# The token that wakes an idle worker in ``none`` (under the shard's prefix: its slot).
WAKE = "wake"

LINE_LUA = f"""
local PMAX, BAND, HALF = {MAX_PRIORITY}, 17592186044416, 8796093022208
-- The line of the shard whose SAQ list is ``queued`` ('saq:<queue>:queued').
local function line_of(queued, fair)
  local p = string.sub(queued, 1, -7)
  local ring, backlog, credit = p .. 'ring', p .. 'backlog', p .. 'credit'
  local waking = p .. 'waking'
  local prio, lined = p .. 'prio', p .. 'lined'
  local wake = p .. '{WAKE}'
  -- Jobs wait in ``prio`` and none on SAQ's list, where idle workers wait: wake one.
  local function wake_one()
    if redis.call('LLEN', queued) == 0 and redis.call('EXISTS', prio) == 1 then
      redis.call('RPUSH', queued, wake)
    end
  end
  local L = {{wake = wake}}
  -- Queue ``id`` (of ``user``, at ``priority``); ``front``: before its equals.
  function L.push(id, user, priority, front)
    priority = tonumber(priority) or 0
    if not fair and priority == 0 then
      if front then redis.call('LPUSH', queued, id) else redis.call('RPUSH', queued, id) end
      return
    end
    local n = redis.call('INCR', p .. 'seq')
    if front then n = -n end
    local score = (PMAX - priority) * BAND + HALF + n
    if not fair then
      redis.call('ZADD', prio, score, id)
      wake_one()
      return
    end
    if redis.call('ZADD', p .. 'line:' .. user, score, id) == 1 then
      redis.call('INCR', lined)
      if tonumber(redis.call('ZINCRBY', backlog, 1, user)) == 1 then
        redis.call('RPUSH', ring, user)
      end
    end
  end
  -- Queue a job from its stored json (a due retry or delay, a job put back).
  function L.place(id, raw, front)
    if not fair and not string.find(raw, '"priority"', 1, true) then
      return L.push(id, '', 0, front)
    end
    local j = cjson.decode(raw)
    local user = ''
    if type(j.kwargs) == 'table' and j.kwargs.user_id then user = tostring(j.kwargs.user_id) end
    return L.push(id, user, j.priority, front)
  end
  local function forget(user)
    redis.call('ZREM', backlog, user)
    redis.call('HDEL', credit, user)
  end
  -- Take ``id`` out of the line wherever it waits (an abort, a sweep); ``user``: its user.
  function L.remove(id, user)
    redis.call('LREM', queued, 0, id)
    if redis.call('ZREM', prio, id) == 1 then return end
    if user and redis.call('ZREM', p .. 'line:' .. user, id) == 1 then
      redis.call('DECR', lined)
      if tonumber(redis.call('ZINCRBY', backlog, -1, user)) <= 0 then
        forget(user)
        redis.call('LREM', ring, 1, user)  -- O(users), on this rare path only
        redis.call('LREM', waking, 1, user)
      end
    end
  end
  -- The ring's next job: its head user's first, then his turn goes on or passes.
  local function take_fair()
    -- Users an idle worker lifted off the ring to wake (see HardenedRedisQueue): back
    -- to its head, as if never lifted (one of them if that worker is gone).
    while redis.call('RPOPLPUSH', waking, ring) do end
    for _ = 1, 3 do  -- a user listed without a job (never, unless keys were edited)
      local user = redis.call('LINDEX', ring, 0)
      if not user then return nil end
      local popped = redis.call('ZPOPMIN', p .. 'line:' .. user)
      if popped[1] then
        redis.call('DECR', lined)
        if tonumber(redis.call('ZINCRBY', backlog, -1, user)) <= 0 then
          forget(user)
          redis.call('LPOP', ring)
        else
          local left = tonumber(redis.call('HGET', credit, user))
          local counted = left ~= nil  -- a turn of more than one take, under way
          if not counted then left = tonumber(redis.call('HGET', p .. 'weights', user)) or 1 end
          if left <= 1 then
            if counted then redis.call('HDEL', credit, user) end
            redis.call('RPUSH', ring, redis.call('LPOP', ring))  -- his turn passes
          else
            redis.call('HSET', credit, user, left - 1)
          end
        end
        return popped[1]
      end
      forget(user)
      redis.call('LPOP', ring)
    end
    return nil
  end
  local function pop(key)
    local popped = redis.call('ZPOPMIN', key)
    return popped[1]
  end
  -- The next job to run, out of the line, and whether it is in the active list
  -- already: ``list_take()`` moves SAQ's list's head there as the caller always has;
  -- the caller moves the others.
  function L.take(list_take)
    local id
    if fair then
      id = list_take()
      if id then return id, true end
      return take_fair() or pop(prio), false
    end
    local head = redis.call('ZRANGE', prio, 0, 0, 'WITHSCORES')
    if head[1] and tonumber(head[2]) < PMAX * BAND then
      redis.call('ZREM', prio, head[1])
      wake_one()
      return head[1], false
    end
    id = list_take()
    if id then return id, true end
    id = pop(prio)
    if id then
      wake_one()
      return id, false
    end
    return take_fair(), false
  end
  return L
end
"""
