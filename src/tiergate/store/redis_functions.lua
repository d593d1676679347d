-- tiergate's counting state in Redis: DESIGN §2 steps 4-9 for one limit scope,
-- the same rules as the reference engine (tiergate/engine/reference/engine.py),
-- decided and consumed atomically by one call.
--
-- Every key a call touches carries the scope's hash tag ({pf:...}), so a call
-- touches one Cluster slot; every key is declared (KEYS). Layout:
--   KEYS[1] meta   hash: c (scope clock, ms), lo/tot of each ring, t:<number>
--                  (throughput TAT, µs)
--   KEYS[2] r24    string: 24 h ring, big-endian int32 counts per minute bucket
--   KEYS[3] r7     string: 7 d ring of recipients (hour buckets, strict)
--   KEYS[4] s7     string: 7 d ring of slots created (hour buckets, strict)
--   KEYS[5] opt    set: opted-out recipients (no TTL)
--   KEYS[6..]      shard hashes, each holding its recipients' scope entries
--                  (recipient -> last counted i8 + gen/fresh i2; m<recipient> ->
--                  4 marketing times) and number entries (<number>:<recipient> ->
--                  pair TAT, pair start; window and fep ends first when open)
-- Recipients are decimal strings and never computed on (they exceed 2^53);
-- times are ms within 0 .. 2^43, µs TATs stay below 2^53.

local NEVER = -4611686018427387904
local GEN_MAX = 2047
local ADMIT, RETRY_LATER, REJECT = 1, 2, 3
local OK, SENDER_RESTRICTED, OUTSIDE_WINDOW, RECIPIENT_OPTED_OUT = 1, 3, 6, 7
local MESSAGING_LIMIT, MARKETING_FREQUENCY, QUALITY_PROTECTION = 8, 9, 10
local THROUGHPUT, PAIR_RATE = 11, 12
local F_TEMPLATE, F_MARKETING, F_RESTRICTED, F_QUALITY_BLOCK = 1, 2, 4, 8
local F_FEP_FREE_FORM, F_DRY_RUN, F_FORCE, F_FEP_PRICING = 16, 32, 64, 128
local F_REPLY_RESTRICTED = 256
-- (bit and struct are reached when a function runs: a library's load sees neither)
local function band(a, b)
  return bit.band(a, b)
end
local function pack(...)
  return struct.pack(...)
end
local function sunpack(...)
  return struct.unpack(...)
end

local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function has(flags, f)
  return band(flags, f) ~= 0
end

-- rings ---------------------------------------------------------------------

-- A ring's counts are read from its string once per bucket per call and written
-- back once, at the call's end (ring_save): the rows of a batch mostly share a bucket.
local function ring(key, name, width, window, strict, m)
  local lo = tonumber(m[name .. 'lo'] or NEVER)
  return {key = key, name = name, width = width, window = window, strict = strict,
          n = fdiv(window, width) + 2, lo = lo, total = tonumber(m[name .. 'tot'] or 0),
          cache = {}, dirty = {}, cleared = false}
end

local function ring_get(r, i)
  local c = r.cache[i]
  if c ~= nil then
    return c
  end
  c = 0
  if not r.cleared then
    local s = redis.call('GETRANGE', r.key, i * 4, i * 4 + 3)
    if #s == 4 then
      c = sunpack('>i4', s)
    end
  end
  r.cache[i] = c
  return c
end

local function ring_set(r, i, v)
  r.cache[i] = v
  r.dirty[i] = true
end

local function ring_save(r)
  if r.cleared then
    redis.call('DEL', r.key)
  end
  for i in pairs(r.dirty) do
    redis.call('SETRANGE', r.key, i * 4, pack('>i4', r.cache[i]))
  end
  r.dirty, r.cleared = {}, false
end

local function ring_advance(r, now)
  local new_lo = fdiv(now - r.window, r.width) + (r.strict and 1 or 0)
  if new_lo <= r.lo then
    return
  end
  if new_lo - r.lo >= r.n then
    r.cache, r.dirty, r.cleared = {}, {}, true
    r.total = 0
  else
    for b = r.lo, new_lo - 1 do
      local i = b % r.n
      local c = ring_get(r, i)
      if c ~= 0 then
        r.total = r.total - c
        ring_set(r, i, 0)
      end
    end
  end
  r.lo = new_lo
end

local function ring_add(r, t, d)
  if t == NEVER then
    return
  end
  local b = fdiv(t, r.width)
  if b >= r.lo then
    local i = b % r.n
    ring_set(r, i, ring_get(r, i) + d)
    r.total = r.total + d
  end
end

local function ring_next_free(r, limit, now)
  if r.total < limit then
    return now
  end
  local need = r.total - limit + 1
  local acc = 0
  local s = r.cleared and '' or (redis.call('GET', r.key) or '')
  for b = r.lo, r.lo + r.n - 1 do
    local i = b % r.n
    local c = r.cache[i]
    if c ~= nil then
      acc = acc + c
    elseif #s >= i * 4 + 4 then
      acc = acc + (sunpack('>i4', s, i * 4 + 1))
    end
    if acc >= need then
      return (b + 1) * r.width + r.window
    end
  end
  return redis.error_reply('tiergate: ring total out of step with its buckets')
end

-- a scope: its clock and rings, loaded once per call and saved at its end ---

local function scope_open(keys, args, i)
  -- args[i..i+3]: bucket_ms, window_ms, long_bucket_ms, long_window_ms
  local raw = redis.call('HGETALL', keys[1])
  local m = {}
  for j = 1, #raw, 2 do
    m[raw[j]] = raw[j + 1]
  end
  local bucket, window = tonumber(args[i]), tonumber(args[i + 1])
  local lbucket, lwindow = tonumber(args[i + 2]), tonumber(args[i + 3])
  return {
    meta = m, key = keys[1], opt = keys[5],
    clock = tonumber(m.c or NEVER), window = window,
    r24 = ring(keys[2], 'd', bucket, window, false, m),
    r7 = ring(keys[3], 'w', lbucket, lwindow, true, m),
    s7 = ring(keys[4], 's', lbucket, lwindow, true, m),
  }
end

local function scope_clamp(s, now)
  if now < s.clock then
    return s.clock
  end
  s.clock = now
  ring_advance(s.r24, now)
  ring_advance(s.r7, now)
  ring_advance(s.s7, now)
  return now
end

local function scope_save(s, keys, ttl)
  local out = {'c', s.clock}
  for _, r in ipairs({s.r24, s.r7, s.s7}) do
    ring_save(r)
    out[#out + 1] = r.name .. 'lo'
    out[#out + 1] = r.lo
    out[#out + 1] = r.name .. 'tot'
    out[#out + 1] = r.total
  end
  for k, v in pairs(s.tat or {}) do
    out[#out + 1] = 't:' .. k
    out[#out + 1] = v
  end
  redis.call('HSET', s.key, unpack(out))
  if ttl > 0 then
    for j = 1, 4 do
      redis.call('PEXPIRE', keys[j], ttl)
    end
  end
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- recipient entries -----------------------------------------------------------

local function scope_value(v)
  if not v then
    return nil
  end
  local last, gf = sunpack('>i8i2', v)
  return {last = last, gen = math.floor(gf / 2), fresh = gf % 2 == 1}
end

local function scope_entry(key, rcpt)
  return scope_value(redis.call('HGET', key, rcpt))
end

local function scope_entry_put(key, rcpt, e)
  redis.call('HSET', key, rcpt, pack('>i8i2', e.last, e.gen * 2 + (e.fresh and 1 or 0)))
end

local function marketing_get(key, rcpt)
  local v = redis.call('HGET', key, 'm' .. rcpt)
  if not v then
    return {NEVER, NEVER, NEVER, NEVER}
  end
  local a, b, c, d = sunpack('>i8i8i8i8', v)
  return {a, b, c, d}
end

local function number_value(v)
  if #v == 16 then  -- pair rate only
    local tat, start = sunpack('>i8i8', v)
    return {window = NEVER, fep = NEVER, tat = tat, start = start}
  end
  local w, f, tat, start = sunpack('>i8i8i8i8', v)
  return {window = w, fep = f, tat = tat, start = start}
end

-- Whether a number entry's every time is before cut (as no entry at all).
local function number_stale(v, cut)
  local e = number_value(v)
  return e.window < cut and e.fep < cut and e.tat < cut
end

-- Four fields picked at random, number entries among them dropped if stale: each
-- write sweeps, so stale entries stay about as many as live ones (pair-rate TATs
-- expire in seconds). A number entry's field is <number>:<recipient>.
local function number_sweep(key, cut)
  local pick = redis.call('HRANDFIELD', key, 4, 'WITHVALUES')
  for j = 1, #pick, 2 do
    if string.find(pick[j], ':', 1, true) and number_stale(pick[j + 1], cut) then
      redis.call('HDEL', key, pick[j])
    end
  end
end

local function number_pack(e)
  if e.window == NEVER and e.fep == NEVER then
    return pack('>i8i8', e.tat, e.start)
  end
  return pack('>i8i8i8i8', e.window, e.fep, e.tat, e.start)
end

local function number_entry(key, field)
  local v = redis.call('HGET', key, field)
  return v and number_value(v) or nil
end

-- swept: the keys this call has swept already (nil: sweep anyway)
local function number_entry_put(key, field, e, cut, swept)
  if e.window < cut and e.fep < cut and e.tat < cut then
    redis.call('HDEL', key, field)  -- as no entry at all for any decision from now on
  else
    redis.call('HSET', key, field, number_pack(e))
  end
  if swept == nil or not swept[key] then
    number_sweep(key, cut)
    if swept ~= nil then
      swept[key] = true
    end
  end
end

-- one decision (steps 4 to 9) ---------------------------------------------------

local function refuse(d, rsn, retry, s, last)
  return {d, rsn, retry, 0, s.r24.total, last, 0, 0}
end

-- field f and value v appended to w (the fields of one HSET)
local function put(w, f, v)
  w[#w + 1] = f
  w[#w + 1] = v
end

local function decide_one(s, num, now, rcpt, ckey, flags, limit)
  now = scope_clamp(s, now)
  local nfield = num.name .. ':' .. rcpt
  local got = redis.call('HMGET', ckey, rcpt, nfield, '_t')
  local se = scope_value(got[1])
  local ne = got[2] and number_value(got[2]) or nil
  local template, marketing = has(flags, F_TEMPLATE), has(flags, F_MARKETING)
  local last = se and se.last or NEVER
  local in_window = ne ~= nil and now < ne.window
  local in_fep = ne ~= nil and now < ne.fep
  local counting = template and not in_window and not (in_fep and not has(flags, F_FEP_PRICING))
  local needs_slot = counting and not (last > now - s.window)
  local r24 = s.r24
  local now_us = now * 1000
  local tput_tat = math.max(num.tat, now_us)
  local pair_tat = math.max(ne and ne.tat or NEVER, now)
  local pair_start = (ne ~= nil and pair_tat > now) and ne.start or now

  if not has(flags, F_FORCE) then
    if not template and not (in_window or (in_fep and has(flags, F_FEP_FREE_FORM))) then
      return refuse(REJECT, OUTSIDE_WINDOW, 0, s, last)
    end
    if marketing and redis.call('SISMEMBER', s.opt, rcpt) == 1 then
      return refuse(REJECT, RECIPIENT_OPTED_OUT, 0, s, last)
    end
    if counting then
      if has(flags, F_RESTRICTED) then
        return refuse(REJECT, SENDER_RESTRICTED, 0, s, last)
      end
      if needs_slot and r24.total >= limit then
        if limit <= 0 then
          return refuse(REJECT, MESSAGING_LIMIT, 0, s, last)
        end
        return refuse(RETRY_LATER, MESSAGING_LIMIT, ring_next_free(r24, limit, now), s, last)
      end
    elseif has(flags, F_REPLY_RESTRICTED) then
      return refuse(REJECT, SENDER_RESTRICTED, 0, s, last)
    end
    if marketing then
      if s.freq_cap > 0 then
        local horizon = now - s.freq_window
        local recent = {}
        for _, t in ipairs(marketing_get(ckey, rcpt)) do
          if t > horizon then
            recent[#recent + 1] = t
          end
        end
        table.sort(recent)
        if #recent >= s.freq_cap then
          local retry = recent[#recent - s.freq_cap + 1] + s.freq_window
          return refuse(RETRY_LATER, MARKETING_FREQUENCY, retry, s, last)
        end
      end
      if has(flags, F_QUALITY_BLOCK) then
        return refuse(REJECT, QUALITY_PROTECTION, 0, s, last)
      end
    end
    if tput_tat - num.tput_tol > now_us then
      return refuse(RETRY_LATER, THROUGHPUT, -fdiv(-(tput_tat - num.tput_tol), 1000), s, last)
    end
    if pair_tat > now and (now - pair_start >= num.pair_iv or pair_tat - pair_start > num.pair_tol) then
      return refuse(RETRY_LATER, PAIR_RATE, pair_tat, s, last)
    end
  end

  local counted = needs_slot and 1 or 0
  if has(flags, F_DRY_RUN) then
    return {ADMIT, OK, 0, counted, r24.total + counted, last, 0, 0}
  end
  local slot_t, gen = 0, 0
  local w = {}  -- the fields this admit writes to the shard hash, in one HSET
  if counting then
    se = se or {last = NEVER, gen = 0, fresh = false}
    for _, r in ipairs({r24, s.r7}) do
      ring_add(r, last, -1)
      ring_add(r, now, 1)
    end
    se.last = now
    if needs_slot then
      ring_add(s.s7, now, 1)
      se.gen = se.gen < GEN_MAX and se.gen + 1 or 1
      se.fresh = true
      slot_t, gen = now, se.gen
    else
      se.fresh = false
    end
    put(w, rcpt, pack('>i8i2', se.last, se.gen * 2 + (se.fresh and 1 or 0)))
  end
  if marketing then
    local hist = marketing_get(ckey, rcpt)
    local at = 1
    for j = 2, 4 do
      if hist[j] < hist[at] then
        at = j
      end
    end
    hist[at] = now
    put(w, 'm' .. rcpt, pack('>i8i8i8i8', hist[1], hist[2], hist[3], hist[4]))
  end
  num.tat = tput_tat + num.tput_iv
  s.tat[num.name] = num.tat
  ne = ne or {window = NEVER, fep = NEVER, tat = NEVER, start = NEVER}
  ne.tat = pair_tat + num.pair_iv
  ne.start = pair_start
  put(w, nfield, number_pack(ne))  -- its TAT is ahead: never stale now
  -- The hash's TTL (twice ttl) is renewed when its mark (_t, Redis wall time) is
  -- older than ttl: whatever it holds lives at least ttl from its last write.
  local renew = s.ttl > 0 and not s.renewed[ckey] and tonumber(got[3] or 0) < s.wall - s.ttl
  if renew then
    put(w, '_t', s.wall)
  end
  redis.call('HSET', ckey, unpack(w))
  if renew then
    redis.call('PEXPIRE', ckey, 2 * s.ttl)
    s.renewed[ckey] = true
  end
  if not s.swept[ckey] then
    number_sweep(ckey, s.clock + 1)
    s.swept[ckey] = true
  end
  return {ADMIT, OK, 0, counted, r24.total, last, slot_t, gen}
end

local function load_number(s, name, args, i)
  local tat = s.tat[name] or tonumber(s.meta['t:' .. name] or NEVER)
  s.tat[name] = tat
  return {name = name, tat = tat, tput_iv = tonumber(args[i]), tput_tol = tonumber(args[i + 1]),
          pair_iv = tonumber(args[i + 2]), pair_tol = tonumber(args[i + 3])}
end

local function touch(keys, first, ttl)
  if ttl > 0 then
    for j = first, #keys do
      redis.call('PEXPIRE', keys[j], ttl)
    end
  end
end

-- decide(keys, args): args = now ('' for Redis TIME), bucket_ms, window_ms,
-- long_bucket_ms, long_window_ms, freq_cap, freq_window_ms, ttl_ms, n_numbers,
-- then per number (name, tput_interval_us, tput_tolerance_us, pair_interval_ms,
-- pair_tolerance_ms), then per row (number 1.., recipient, shard key index,
-- flags, limit, now, idempotency key's key index or 0, its lifetime in ms, what
-- the key binds): a row whose key holds a first admit answers that admit and
-- consumes nothing. Answers the time used (server clock, or 0) then per row:
-- decision, reason, retry_at, counted, used, prev_counted, slot time, slot
-- generation; then, for each row whose key was bound to another request, its
-- row number and that binding.
local function decide(keys, args)
  local s = scope_open(keys, args, 2)
  s.freq_cap, s.freq_window = tonumber(args[6]), tonumber(args[7])
  s.tat, s.swept, s.renewed = {}, {}, {}
  local ttl = tonumber(args[8])
  s.ttl, s.wall = ttl, ttl > 0 and server_now() or 0
  local nn = tonumber(args[9])
  local nums = {}
  local at = 10
  for j = 1, nn do
    nums[j] = load_number(s, args[at], args, at + 1)
    at = at + 5
  end
  local server = args[1] == ''
  local snow = server and server_now() or 0
  local out, bound, row = {snow}, {}, 0
  while at <= #args do
    row = row + 1
    local now = server and snow or tonumber(args[at + 5])
    local kidx, flags = tonumber(args[at + 6]), tonumber(args[at + 3])
    local prior = kidx > 0 and redis.call('GET', keys[kidx])
    local d
    if prior then  -- the key's first admit, at whichever sidecar: nothing consumed again
      d = {sunpack('>i1i1i8i1i8i8i8i2', prior)}
      local was = string.sub(prior, 38)
      if was ~= '' and was ~= args[at + 8] then
        bound[#bound + 1], bound[#bound + 2] = row, was
      end
    else
      d = decide_one(s, nums[tonumber(args[at])], now, args[at + 1],
        keys[tonumber(args[at + 2])], flags, tonumber(args[at + 4]))
      if kidx > 0 and d[1] == ADMIT and not has(flags, F_DRY_RUN) then
        redis.call('SET', keys[kidx], pack('>i1i1i8i1i8i8i8i2', d[1], d[2], d[3], d[4], d[5],
          d[6], d[7], d[8]) .. args[at + 8], 'PX', tonumber(args[at + 7]))
      end
    end
    for k = 1, 8 do
      out[#out + 1] = d[k]
    end
    at = at + 9
  end
  scope_save(s, keys, ttl)
  for k = 1, #bound do
    out[#out + 1] = bound[k]
  end
  return out
end

-- release(keys: meta, r24, r7, s7, opt, scope shard; args: geometry (4), ttl,
-- recipient, slot time, slot generation, prev_counted) -> 1 if released.
local function release(keys, args)
  local s = scope_open(keys, args, 1)
  local rcpt, t, gen, prev = args[6], tonumber(args[7]), tonumber(args[8]), tonumber(args[9])
  local se = scope_entry(keys[6], rcpt)
  if se == nil or not se.fresh or se.gen ~= gen or se.last ~= t or prev > t then
    return 0
  end
  for _, r in ipairs({s.r24, s.r7}) do
    ring_add(r, t, -1)
    ring_add(r, prev, 1)
  end
  ring_add(s.s7, t, -1)
  se.last, se.fresh = prev, false
  scope_entry_put(keys[6], rcpt, se)
  s.tat = {}
  scope_save(s, keys, tonumber(args[5]))
  return 1
end

-- usage(keys: meta, r24, r7, s7; args: geometry (4), now ('' for TIME), limit)
-- -> used_24h, next_slot_free_at, unique_7d, slots_7d, the time used.
local function usage(keys, args)
  local s = scope_open(keys, args, 1)
  local now = args[5] == '' and server_now() or tonumber(args[5])
  local limit = tonumber(args[6])
  now = scope_clamp(s, now)
  local nxt = limit > 0 and ring_next_free(s.r24, limit, now) or 0
  s.tat = {}
  scope_save(s, keys, 0)
  return {s.r24.total, nxt, s.r7.total, s.s7.total, now}
end

-- number_update(keys: number shard; args: op, recipient, a, b, ttl):
-- 'open' (window_until a, fep_until b: never shortened), 'close', 'hold' (pair
-- owes until a, no burst before).
local function number_update(keys, args)
  local op, field, a, b = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local ne = number_entry(keys[1], field)
  if op == 'close' then
    if ne ~= nil then
      ne.window, ne.fep = NEVER, NEVER
      number_entry_put(keys[1], field, ne, NEVER + 1)
    end
    return 1
  end
  ne = ne or {window = NEVER, fep = NEVER, tat = NEVER, start = NEVER}
  if op == 'open' then
    ne.window, ne.fep = math.max(ne.window, a), math.max(ne.fep, b)
  elseif op == 'hold' then
    ne.tat, ne.start = math.max(ne.tat, a), NEVER
  else
    return redis.error_reply('tiergate: unknown number update ' .. op)
  end
  number_entry_put(keys[1], field, ne, NEVER + 1)
  touch(keys, 1, 2 * tonumber(args[5]))  -- as a decision renews it
  return 1
end

-- opt_out(keys: opt; args: recipient, 1|0)
local function opt_out(keys, args)
  if args[2] == '1' then
    return redis.call('SADD', keys[1], args[1])
  end
  return redis.call('SREM', keys[1], args[1])
end

-- throughput(keys: meta; args: number, now, pause_ms (-1: one inbound message),
-- tput_interval_us, tput_tolerance_us, ttl_ms): moves the number's TAT (µs) forward.
local function throughput(keys, args)
  local field = 't:' .. args[1]
  local now, pause = tonumber(args[2]), tonumber(args[3])
  local tat = tonumber(redis.call('HGET', keys[1], field) or NEVER)
  local new
  if pause < 0 then
    new = math.max(tat, now * 1000) + tonumber(args[4])
  else
    new = (now + pause) * 1000 + tonumber(args[5])
  end
  redis.call('HSET', keys[1], field, math.max(tat, new))
  touch(keys, 1, tonumber(args[6]))
  return 1
end

-- policy_snapshot(keys: snapshot hash, event stream; args: the stream id's ms and
-- sequence it covers, the state): kept unless one covering as far or further is
-- there; the stream's entries before the one kept are trimmed -> 1 if kept.
local function policy_snapshot(keys, args)
  local ms, seq = tonumber(args[1]), tonumber(args[2])
  local cur = redis.call('HMGET', keys[1], 'ms', 'seq')
  local cms, cseq = tonumber(cur[1]), tonumber(cur[2])
  if cms and (cms > ms or (cms == ms and cseq >= seq)) then
    return 0
  end
  redis.call('HSET', keys[1], 'ms', args[1], 'seq', args[2], 'state', args[3])
  redis.call('XTRIM', keys[2], 'MINID', args[1] .. '-' .. args[2])
  return 1
end

local calls = {decide = decide, release = release, usage = usage,
               number_update = number_update, opt_out = opt_out, throughput = throughput,
               policy_snapshot = policy_snapshot}
-- REGISTER
