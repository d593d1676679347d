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
--   KEYS[6] pairs  hash: <number>:<recipient> -> pair TAT, burst start (ms), only
--                  while the TAT is ahead of the scope's clock
--   KEYS[7] due    sorted set: the same fields scored by their TAT; a decide call
--                  drops those the clock has passed (from pairs too)
--   KEYS[8..]      shard hashes, each holding its recipients' scope entries
--                  (recipient -> last counted i6 + gen/fresh i2; m<recipient> ->
--                  4 marketing times) and window entries (<number>:<recipient> ->
--                  window end, fep end); w<number>/<recipient> -> the last time
--                  a number in warm-up counted the recipient (i8)
--   KEYS[..] warm  string, one per number in warm-up under portfolio scope (its
--                  index among the number's args; tg3:{pf:S}:u:<number>): its own
--                  24 h ring of unique recipients (as r24; its low bucket and
--                  total in meta as u:<number>:lo, u:<number>:tot)
--   KEYS[8] mark   (reconcile only) hash: s -> the highest sequence number
--                  counted, o:<number> -> its counted rows' own throughput TAT
--   KEYS[..] reach sorted set (tg3:{pf:S}:v), a scope on Meta's volume scaling
--                  path only: recipient -> its last counted slot time (ms),
--                  at most the path's cap of them, pruned to the path's window
-- Recipients are decimal strings and never computed on (they exceed 2^53);
-- times are ms within 0 .. 2^43, µs TATs stay below 2^53.
--
-- Cost: a decide call reads each shard hash it needs with one HMGET and writes it
-- with one HSET, the pair entries of all its rows with one HMGET and one HSET,
-- and takes its rows as one packed string: per row the Lua makes no Redis call
-- and builds no table (docs/redis.md,
-- "Where the time goes").

local NEVER = -4611686018427387904
local GEN_MAX = 2047
local ADMIT, RETRY_LATER, REJECT = 1, 2, 3
local OK, SENDER_RESTRICTED, OUTSIDE_WINDOW, RECIPIENT_OPTED_OUT = 1, 3, 6, 7
local MESSAGING_LIMIT, MARKETING_FREQUENCY, QUALITY_PROTECTION = 8, 9, 10
local THROUGHPUT, PAIR_RATE = 11, 12
local F_TEMPLATE, F_MARKETING, F_RESTRICTED, F_QUALITY_BLOCK = 1, 2, 4, 8
local F_FEP_FREE_FORM, F_DRY_RUN, F_FORCE, F_FEP_PRICING = 16, 32, 64, 128
local F_REPLY_RESTRICTED = 256
-- a row of decide's packed rows: number index, flags, limit, now, shard key index,
-- idempotency key index (0: none), its lifetime (ms), recipient (length, text),
-- what the key binds (length, text: '<recipient, kind, category>:<template>')
local ROW = '>I2I4i8i8I4I4i8I1c0I2c0'
-- what an idempotency key holds: its first admit's answer (decision, reason,
-- retry_at, counted, used, prev_counted, slot time, slot generation), then what
-- the key binds (ANSWER_LEN bytes in)
local ANSWER = '>i1i1i8i1i8i8i8i2'
local ANSWER_LEN = 37
-- Fields per HMGET/HSET/HDEL/ZADD call: within Lua's stack (unpack).
local CHUNK = 4000
-- a reconciled row's sequence number (reconcile's packed sequence numbers)
local SEQ = '>i8'
-- bit and struct are reached when a function runs (a library's load sees neither):
-- each entry point binds them first (bind), then calls through these locals.
local band, pack, sunpack
local function bind()
  band, pack, sunpack = bit.band, struct.pack, struct.unpack
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

-- A number's own count in warm-up under portfolio scope: its hooks are defined
-- at the end of this file.
local warmup = {}

-- rings ---------------------------------------------------------------------

-- A ring's counts are read from its string once per bucket per call and written
-- back once, at the call's end (ring_save): the rows of a batch mostly share a bucket.
local function ring(key, name, width, window, strict, m)
  local lo = tonumber(m[name .. 'lo'] or NEVER)
  return {key = key, name = name, width = width, window = window, strict = strict,
          n = fdiv(window, width) + 2, lo = lo, total = tonumber(m[name .. 'tot'] or 0),
          cache = {}, dirty = {}, cleared = false, at = NEVER, atb = 0}
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
  local b = r.atb  -- (the bucket of the time last added: a batch's rows mostly share it)
  if not (t >= r.at and t < r.at + r.width) then
    b = fdiv(t, r.width)
    r.at, r.atb = b * r.width, b
  end
  if b >= r.lo then
    local i = b % r.n
    ring_set(r, i, (r.cache[i] or ring_get(r, i)) + d)
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
    moves = NEVER,
  }
end

-- The first time at which ring_advance moves the ring's low bucket.
local function ring_moves(r)
  return (r.lo - (r.strict and 1 or 0) + 1) * r.width + r.window
end

local function scope_clamp(s, now)
  if now <= s.clock then  -- (at the clock the rings are where it put them)
    return s.clock
  end
  s.clock = now
  if now >= s.moves then  -- (before s.moves no ring's low bucket moves)
    ring_advance(s.r24, now)
    ring_advance(s.r7, now)
    ring_advance(s.s7, now)
    s.moves = math.min(ring_moves(s.r24), ring_moves(s.r7), ring_moves(s.s7))
  end
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
  warmup.save(s, out, ttl)
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

-- entries ---------------------------------------------------------------------

-- A scope entry is 8 bytes: the last counted time in 6 (times are below 2^43;
-- NEVER, after a release of a first count, as the lowest 6-byte number) and the
-- slot generation and freshness (gen * 2 + fresh) in 2.
local NEVER6 = -140737488355328
local function scope_pack(last, gf)
  return pack('>i6i2', last == NEVER and NEVER6 or last, gf)
end

local function scope_unpack(v)
  local last, gf = sunpack('>i6i2', v)
  return last == NEVER6 and NEVER or last, gf
end

local function scope_value(v)
  if not v then
    return nil
  end
  local last, gf = scope_unpack(v)
  return {last = last, gen = math.floor(gf / 2), fresh = gf % 2 == 1}
end

local function scope_entry(key, rcpt)
  return scope_value(redis.call('HGET', key, rcpt))
end

local function scope_entry_put(key, rcpt, e)
  redis.call('HSET', key, rcpt, scope_pack(e.last, e.gen * 2 + (e.fresh and 1 or 0)))
end

-- A window entry: (window end, free-entry-point end); none is (NEVER, NEVER).
local function window_value(v)
  if not v then
    return NEVER, NEVER
  end
  return sunpack('>i8i8', v)
end

-- Four fields picked at random, window entries among them dropped if both ends are
-- past: each window written sweeps, so stale entries stay about as many as live
-- ones. A window entry's field is <number>:<recipient>.
local function window_sweep(key, cut)
  local pick = redis.call('HRANDFIELD', key, 4, 'WITHVALUES')
  for j = 1, #pick, 2 do
    if string.find(pick[j], ':', 1, true) then
      local w, f = window_value(pick[j + 1])
      if w < cut and f < cut then
        redis.call('HDEL', key, pick[j])
      end
    end
  end
end

-- cmd key list[1] list[2] ... in calls of at most CHUNK arguments (within Lua's
-- stack); the replies (of a command answering one per argument) as one list.
local function chunked(cmd, key, list)
  if #list <= CHUNK then
    return redis.call(cmd, key, unpack(list))
  end
  local out = {}
  for from = 1, #list, CHUNK do
    local got = redis.call(cmd, key, unpack(list, from, math.min(#list, from + CHUNK - 1)))
    if type(got) == 'table' then
      for j = 1, #got do
        out[#out + 1] = got[j]
      end
    end
  end
  return out
end

-- A hash's fields read once per call into vals (field -> value or false), from
-- `first` on; the reply's earlier values returned (a shard hash's mark).
local function cache_read(key, fields, vals, first)
  local got = chunked('HMGET', key, fields)
  for j = first, #fields do
    vals[fields[j]] = got[j]
  end
  return got[1]
end

-- one decision (steps 4 to 9) ---------------------------------------------------

-- A row's answer: its 8 numbers at s.out[s.at ..] (numbers, not a packed string:
-- Redis turns them into its reply without a Lua string per row).
local function answer(s, d, rsn, retry, counted, used, last, slot_t, gen)
  local out, at = s.out, s.at
  out[at], out[at + 1], out[at + 2], out[at + 3] = d, rsn, retry, counted
  out[at + 4], out[at + 5], out[at + 6], out[at + 7] = used, last, slot_t, gen
end

-- Shadow mode: flag bit 16 + r shadows reason r (engine.constants.SHADOW_SHIFT).
local function shadowed(flags, rsn)
  local f = 2 ^ (16 + rsn)
  return flags % (2 * f) >= f
end

-- A rule refuses the row (d, rsn, retry): true, that refusal its answer; or, the
-- rule shadowed, false, and the first such refusal kept (s.wd, s.wr, s.wt) as what
-- the row answers if no other rule refuses (it then consumes as an admit).
local function refuse(s, flags, d, rsn, retry, used, last)
  if shadowed(flags, rsn) then
    if s.wd == ADMIT then
      s.wd, s.wr, s.wt = d, rsn, retry
    end
    return false
  end
  s.wd = ADMIT
  answer(s, d, rsn, retry, 0, used, last, 0, 0)
  return true
end

-- (A flag f is tested as flags % (2 * f) >= f: no function call per test.)
-- A row's reads: the values of its shard hash (s.v: a field names one shard hash),
-- the fields written noted in s.dirty (field -> the shard's key index k).
local function decide_one(s, num, now, rcpt, nfield, k, flags, limit, opted)
  now = now > s.clock and scope_clamp(s, now) or s.clock
  local vals = s.v
  local last, gf = NEVER, 0
  local sv = vals[rcpt]
  if sv then
    last, gf = scope_unpack(sv)
  end
  local window, fep = window_value(vals[nfield])
  local ptat, pstart = NEVER, NEVER
  local pv = s.pairs[nfield]
  if pv then
    ptat, pstart = sunpack('>i8i8', pv)
  end
  local template = (flags % (2 * F_TEMPLATE) >= F_TEMPLATE)
  local marketing = (flags % (2 * F_MARKETING) >= F_MARKETING)
  local in_window = now < window
  local in_fep = now < fep
  local fep_priced = (flags % (2 * F_FEP_PRICING) >= F_FEP_PRICING)
  local counting = template and not in_window and not (in_fep and not fep_priced)
  local needs_slot = counting and not (last > now - s.window)
  local r24 = s.r24
  local now_us = now * 1000
  local tput_tat = math.max(num.tat, now_us)
  local pair_tat = math.max(ptat, now)
  local pair_start = pair_tat > now and pstart or now
  local warm_last = num.warm and warmup.look(s, num, rcpt, now) or NEVER

  if not (flags % (2 * F_FORCE) >= F_FORCE) then
    -- step 4: free-form needs an open window
    local free_form = (flags % (2 * F_FEP_FREE_FORM) >= F_FEP_FREE_FORM)
    if not template and not (in_window or (in_fep and free_form)) then
      if refuse(s, flags, REJECT, OUTSIDE_WINDOW, 0, r24.total, last) then
        return
      end
    end
    -- step 5: the recipient opted out of marketing
    if marketing and opted then
      if refuse(s, flags, REJECT, RECIPIENT_OPTED_OUT, 0, r24.total, last) then
        return
      end
    end
    -- step 6: a counting message: sender not restricted, a slot free in 24 h
    if counting then
      if (flags % (2 * F_RESTRICTED) >= F_RESTRICTED) then
        if refuse(s, flags, REJECT, SENDER_RESTRICTED, 0, r24.total, last) then
          return
        end
      end
      if num.warm then  -- the scope's slot or the number's own cap in warm-up
        local d, retry = warmup.over_limit(s, num, needs_slot, limit, warm_last, now)
        if d and refuse(s, flags, d, MESSAGING_LIMIT, retry, r24.total, last) then
          return
        end
      elseif needs_slot and r24.total >= limit then
        local d, retry = REJECT, 0
        if limit > 0 then
          d, retry = RETRY_LATER, ring_next_free(r24, limit, now)
        end
        if refuse(s, flags, d, MESSAGING_LIMIT, retry, r24.total, last) then
          return
        end
      end
    elseif (flags % (2 * F_REPLY_RESTRICTED) >= F_REPLY_RESTRICTED) then
      if refuse(s, flags, REJECT, SENDER_RESTRICTED, 0, r24.total, last) then
        return
      end
    end
    -- step 7: protective rules (marketing frequency cap, quality block)
    if marketing then
      if s.freq_cap > 0 then
        local horizon = now - s.freq_window
        local recent = {}
        local mv = vals['m' .. rcpt]
        if mv then
          local a, b, c, d = sunpack('>i8i8i8i8', mv)  -- (not the position after)
          for _, t in ipairs({a, b, c, d}) do
            if t > horizon then
              recent[#recent + 1] = t
            end
          end
        end
        table.sort(recent)
        if #recent >= s.freq_cap then
          local retry = recent[#recent - s.freq_cap + 1] + s.freq_window
          if refuse(s, flags, RETRY_LATER, MARKETING_FREQUENCY, retry, r24.total, last) then
            return
          end
        end
      end
      if (flags % (2 * F_QUALITY_BLOCK) >= F_QUALITY_BLOCK) then
        if refuse(s, flags, REJECT, QUALITY_PROTECTION, 0, r24.total, last) then
          return
        end
      end
    end
    -- step 8: the sender's throughput bucket
    if tput_tat - num.tput_tol > now_us then
      local retry = -fdiv(-(tput_tat - num.tput_tol), 1000)
      if refuse(s, flags, RETRY_LATER, THROUGHPUT, retry, r24.total, last) then
        return
      end
    end
    -- step 9: the pair-rate bucket
    if pair_tat > now and (now - pair_start >= num.pair_iv or pair_tat - pair_start > num.pair_tol) then
      if refuse(s, flags, RETRY_LATER, PAIR_RATE, pair_tat, r24.total, last) then
        return
      end
    end
  end

  -- admitted (or every refusal shadowed: the first is the answer): consume what it
  -- takes (nothing on a dry run)
  local d, rsn, retry = ADMIT, OK, 0
  if s.wd ~= ADMIT then
    d, rsn, retry = s.wd, s.wr, s.wt
    s.wd = ADMIT
  end
  local counted = needs_slot and 1 or 0
  if (flags % (2 * F_DRY_RUN) >= F_DRY_RUN) then
    return answer(s, d, rsn, retry, counted, r24.total + counted, last, 0, 0)
  end
  local slot_t, gen = 0, 0
  if counting then
    ring_add(r24, last, -1)
    ring_add(r24, now, 1)
    ring_add(s.r7, last, -1)
    ring_add(s.r7, now, 1)
    gen = math.floor(gf / 2)
    if needs_slot then
      ring_add(s.s7, now, 1)
      gen = gen < GEN_MAX and gen + 1 or 1
      slot_t = now
      vals[rcpt] = scope_pack(now, gen * 2 + 1)
      if s.reach then  -- (a scope on the volume path: the recipient reached now)
        s.reach.at[rcpt] = now
      end
    else
      vals[rcpt] = scope_pack(now, gen * 2)
      gen = 0
    end
    s.dirty[rcpt] = k
    if num.warm then
      warmup.count(s, num, rcpt, k, warm_last, now)
    end
  end
  if marketing then
    local mf = 'm' .. rcpt
    local hist = {NEVER, NEVER, NEVER, NEVER}
    if vals[mf] then
      local a, b, c, d = sunpack('>i8i8i8i8', vals[mf])
      hist = {a, b, c, d}
    end
    local at = 1
    for j = 2, 4 do
      if hist[j] < hist[at] then
        at = j
      end
    end
    hist[at] = now
    vals[mf] = pack('>i8i8i8i8', hist[1], hist[2], hist[3], hist[4])
    s.dirty[mf] = k
  end
  num.tat = tput_tat + num.tput_iv
  s.tat[num.name] = num.tat
  s.pairs[nfield] = pack('>i8i8', pair_tat + num.pair_iv, pair_start)
  s.pair_dirty[nfield] = pair_tat + num.pair_iv  -- ahead of the clock: never stale now
  return answer(s, d, rsn, retry, counted, r24.total, last, slot_t, gen)
end

-- args[i..i+5]: tput_interval_us, tput_tolerance_us, pair_interval_ms,
-- pair_tolerance_ms, warm-up cap, its ring's key index (0: not in warm-up)
local function load_number(s, name, args, i, keys)
  local tat = s.tat[name] or tonumber(s.meta['t:' .. name] or NEVER)
  s.tat[name] = tat
  local num = {name = name, tat = tat, tput_iv = tonumber(args[i]),
               tput_tol = tonumber(args[i + 1]), pair_iv = tonumber(args[i + 2]),
               pair_tol = tonumber(args[i + 3])}
  warmup.load(s, num, tonumber(args[i + 4]), keys[tonumber(args[i + 5])])
  return num
end

local function touch(keys, first, ttl)
  if ttl > 0 then
    for j = first, #keys do
      redis.call('PEXPIRE', keys[j], ttl)
    end
  end
end

-- The rows of a packed string, as columns; with the fields each shard hash is read
-- for (its rows' scope, marketing and window entries, and its mark _t), and the
-- pair fields of all rows.
local function rows_parse(blob, nums)
  local r = {num = {}, flags = {}, limit = {}, now = {}, shard = {}, kidx = {}, kms = {},
             rcpt = {}, nfield = {}, binding = {}}
  local reads, seen, pfields = {}, {}, {}
  local marketing = {}
  local pos, n = 1, 0
  while pos <= #blob do
    local ni, flags, limit, now, sk, kidx, kms, rcpt, binding
    ni, flags, limit, now, sk, kidx, kms, rcpt, binding, pos = sunpack(ROW, blob, pos)
    n = n + 1
    local nfield = nums[ni].name .. ':' .. rcpt
    r.num[n], r.flags[n], r.limit[n], r.now[n], r.shard[n] = nums[ni], flags, limit, now, sk
    r.kidx[n], r.kms[n], r.rcpt[n], r.nfield[n] = kidx, kms, rcpt, nfield
    r.binding[n] = binding
    local f = reads[sk]
    if f == nil then
      f = {'_t'}
      reads[sk] = f
    end
    if not seen[rcpt] then  -- (a field names one shard hash: one seen for all)
      seen[rcpt] = true
      f[#f + 1] = rcpt
    end
    if not seen[nfield] then
      seen[nfield] = true
      f[#f + 1] = nfield
      pfields[#pfields + 1] = nfield
      if nums[ni].warm then
        f[#f + 1] = warmup.field(nums[ni].name, rcpt)
      end
    end
    if has(flags, F_MARKETING) then
      local mf = 'm' .. rcpt
      if not seen[mf] then
        seen[mf] = true
        f[#f + 1] = mf
      end
      marketing[#marketing + 1] = n
    end
  end
  r.n = n
  return r, reads, pfields, marketing
end

-- Each shard hash written: its changed fields in one HSET, its TTL renewed (twice
-- ttl) when its mark (_t, Redis wall time) is older than ttl, so whatever it holds
-- lives at least ttl from its last write.
local function shards_save(s, keys)
  local writes = {}
  for f, k in pairs(s.dirty) do
    local w = writes[k]
    if w == nil then
      w = {}
      writes[k] = w
    end
    w[#w + 1] = f
    w[#w + 1] = s.v[f]
  end
  for k, w in pairs(writes) do
    local renew = s.ttl > 0 and tonumber(s.marks[k] or 0) < s.wall - s.ttl
    if renew then
      w[#w + 1] = '_t'
      w[#w + 1] = s.wall
    end
    chunked('HSET', keys[k], w)
    if renew then
      redis.call('PEXPIRE', keys[k], 2 * s.ttl)
    end
  end
end

-- The pair entries written, and those whose TAT the clock has passed dropped (as
-- no entry at all for any decision from now on), at most `bound` of them a call.
local function pairs_save(s, keys, bound)
  local w, z = {}, {}
  for f, tat in pairs(s.pair_dirty) do
    w[#w + 1] = f
    w[#w + 1] = s.pairs[f]
    z[#z + 1] = tat
    z[#z + 1] = f
  end
  if #w > 0 then
    chunked('HSET', keys[6], w)
    chunked('ZADD', keys[7], z)
  end
  local stale = redis.call('ZRANGEBYSCORE', keys[7], '-inf', s.clock, 'LIMIT', 0, bound)
  if #stale > 0 then  -- (the lowest scores: ranks 0 .. #stale - 1)
    chunked('HDEL', keys[6], stale)
    redis.call('ZREMRANGEBYRANK', keys[7], 0, #stale - 1)
  end
end

-- A decide (or reconcile) call's scope, numbers and rows, and every value its rows
-- read, once: each shard hash, the pair entries, opt-outs (opted: row -> true).
local function call_open(keys, args)
  bind()
  local s = scope_open(keys, args, 2)
  s.freq_cap, s.freq_window = tonumber(args[6]), tonumber(args[7])
  s.tat = {}
  local ttl = tonumber(args[8])
  s.ttl, s.wall = ttl, ttl > 0 and server_now() or 0
  local rk = tonumber(args[9])  -- (0: the scope is off the volume path)
  if rk > 0 then
    s.reach = {key = keys[rk], window = tonumber(args[10]), cap = tonumber(args[11]), at = {}}
  end
  local nn = tonumber(args[12])
  local nums = {}
  local at = 13
  for j = 1, nn do
    nums[j] = load_number(s, args[at], args, at + 1, keys)
    at = at + 7
  end
  local r, reads, pfields, marketing = rows_parse(args[at], nums)
  s.v, s.marks, s.dirty = {}, {}, {}
  for k, fields in pairs(reads) do
    s.marks[k] = cache_read(keys[k], fields, s.v, 2)
  end
  s.pairs, s.pair_dirty = {}, {}
  if #pfields > 0 then
    cache_read(keys[6], pfields, s.pairs, 1)
  end
  local opted = {}
  if #marketing > 0 then
    local list = {}
    for j, i in ipairs(marketing) do
      list[j] = r.rcpt[i]
    end
    local got = chunked('SMISMEMBER', keys[5], list)
    for j, i in ipairs(marketing) do
      opted[i] = got[j] == 1
    end
  end
  return s, r, opted, ttl, nums
end

-- A scope on Meta's volume scaling path: the recipients its rows counted, each at
-- its slot time, added to its reach (one ZADD a call); past the cap, the ones
-- counted before the path's window dropped (as the engine's prune_reach), then the
-- oldest past the cap (the newest cap of them are kept: at least the path's
-- unique_users, so its progress reads the same); kept a window after the write.
local function reach_save(s)
  local r = s.reach
  if r == nil or next(r.at) == nil then
    return
  end
  local z = {}
  for rcpt, t in pairs(r.at) do
    z[#z + 1] = t
    z[#z + 1] = rcpt
  end
  chunked('ZADD', r.key, z)
  local n = redis.call('ZCARD', r.key)
  if n > r.cap then
    n = n - redis.call('ZREMRANGEBYSCORE', r.key, '-inf', s.clock - r.window)
    if n > r.cap then
      redis.call('ZREMRANGEBYRANK', r.key, 0, n - r.cap - 1)
    end
  end
  redis.call('PEXPIRE', r.key, r.window)
end

-- What a decide (or reconcile) call changed, written: shard hashes, pair entries,
-- the scope's meta and rings, the reach of a scope on the volume path.
local function call_save(s, keys, n, ttl)
  shards_save(s, keys)
  reach_save(s)
  pairs_save(s, keys, 2 * n + 64)
  scope_save(s, keys, ttl)
  touch({keys[6], keys[7]}, 1, ttl)
end

-- decide(keys, args): args = now ('' for Redis TIME), bucket_ms, window_ms,
-- long_bucket_ms, long_window_ms, freq_cap, freq_window_ms, ttl_ms, the reach
-- key's index (0: the scope is off Meta's volume path), the path's window (ms)
-- and cap, n_numbers, then per number (name, tput_interval_us, tput_tolerance_us,
-- pair_interval_ms, pair_tolerance_ms, warm-up cap, its ring's key index or 0),
-- then the rows packed in one string (ROW each): a row whose idempotency key holds
-- a first admit answers that admit and consumes nothing. Answers the time used (server clock,
-- or 0), then per row: decision, reason, retry_at, counted, used, prev_counted,
-- slot time, slot generation; then the scope's clock and its 7-day totals (unique
-- recipients, slots created) after the rows; then, for each row whose key a row
-- before it in this call bound to another request, its row number and that binding. When a
-- key held before the call binds another request than its row's, nothing is
-- decided: the answer is 'bound', then each such row's number and binding.
local function decide(keys, args)
  local s, r, opted, ttl = call_open(keys, args)
  local prior, made, refused = {}, {}, {'bound'}
  for i = 1, r.n do  -- the keys' first admits, each checked before anything is decided
    local kidx = r.kidx[i]
    local was = kidx > 0 and redis.call('GET', keys[kidx])
    prior[i] = was
    if was and #was > ANSWER_LEN and string.sub(was, ANSWER_LEN + 1) ~= r.binding[i] then
      refused[#refused + 1], refused[#refused + 2] = i, string.sub(was, ANSWER_LEN + 1)
    end
  end
  if #refused > 1 then
    return refused
  end
  local server = args[1] == ''
  local snow = server and server_now() or 0
  local out, bound = {snow}, {}
  s.out, s.wd = out, ADMIT
  for i = 1, r.n do
    local now = server and snow or r.now[i]
    local kidx, flags = r.kidx[i], r.flags[i]
    local was = prior[i] or (kidx > 0 and made[kidx])
    s.at = 8 * i - 6
    if was then  -- the key's first admit, at whichever sidecar: nothing consumed again
      answer(s, sunpack(ANSWER, was))
      if not prior[i] and string.sub(was, ANSWER_LEN + 1) ~= r.binding[i] then
        bound[#bound + 1], bound[#bound + 2] = i, string.sub(was, ANSWER_LEN + 1)
      end
    else
      decide_one(s, r.num[i], now, r.rcpt[i], r.nfield[i], r.shard[i], flags, r.limit[i],
        opted[i])
      -- (a shadow admit, answered with its would-be refusal, is kept as an admit)
      if kidx > 0 and (out[s.at] == ADMIT or shadowed(flags, out[s.at + 1]))
          and not has(flags, F_DRY_RUN) then
        local v = pack(ANSWER, unpack(out, s.at, s.at + 7)) .. r.binding[i]
        made[kidx] = v
        redis.call('SET', keys[kidx], v, 'PX', r.kms[i])
      end
    end
  end
  call_save(s, keys, r.n, ttl)
  local at = #out  -- (what the tier machine's upgrade by usage reads)
  out[at + 1], out[at + 2], out[at + 3] = s.clock, s.r7.total, s.s7.total
  for k = 1, #bound do
    out[#out + 1] = bound[k]
  end
  return out
end

-- release(keys: meta, r24, r7, s7, opt, scope shard, reach[, the number's warm-up
-- ring]; args: geometry (4), ttl, recipient, slot time, slot generation,
-- prev_counted[, the number]) -> 1 if released. A recipient in the reach (the
-- volume path's) goes back to prev_counted there, or out of it, as in the engine.
local function release(keys, args)
  bind()
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
  if redis.call('ZSCORE', keys[7], rcpt) then
    if prev == NEVER then
      redis.call('ZREM', keys[7], rcpt)
    else
      redis.call('ZADD', keys[7], 'XX', prev, rcpt)
    end
  end
  if keys[8] then  -- the number in warm-up the admit was from: its own count too
    warmup.release(s, args[10], keys[8], keys[6], rcpt, t, prev)
  end
  s.tat = {}
  scope_save(s, keys, tonumber(args[5]))
  return 1
end

-- usage(keys: meta, r24, r7, s7; args: geometry (4), now ('' for TIME), limit)
-- -> used_24h, next_slot_free_at, unique_7d, slots_7d, the time used.
local function usage(keys, args)
  bind()
  local s = scope_open(keys, args, 1)
  local now = args[5] == '' and server_now() or tonumber(args[5])
  local limit = tonumber(args[6])
  now = scope_clamp(s, now)
  local nxt = limit > 0 and ring_next_free(s.r24, limit, now) or 0
  s.tat = {}
  scope_save(s, keys, 0)
  return {s.r24.total, nxt, s.r7.total, s.s7.total, now}
end

-- number_update(keys, args: op, field <number>:<recipient>, a, b, ttl):
-- 'open' (keys: shard, meta; window_until a, fep_until b: never shortened; window
-- entries the scope's clock has passed swept), 'close' (keys: shard), 'hold'
-- (keys: pairs, due; the pair owes until a, no burst before).
local function number_update(keys, args)
  bind()
  local op, field, a, b = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local ttl = tonumber(args[5])
  if op == 'hold' then
    local tat = NEVER
    local v = redis.call('HGET', keys[1], field)
    if v then
      tat = sunpack('>i8i8', v)
    end
    tat = math.max(tat, a)
    redis.call('HSET', keys[1], field, pack('>i8i8', tat, NEVER))
    redis.call('ZADD', keys[2], tat, field)
    touch(keys, 1, ttl)
    return 1
  end
  local v = redis.call('HGET', keys[1], field)
  local window, fep = window_value(v)
  if op == 'close' then
    if v then
      redis.call('HDEL', keys[1], field)  -- as no entry at all
    end
    return 1
  elseif op ~= 'open' then
    return redis.error_reply('tiergate: unknown number update ' .. op)
  end
  window, fep = math.max(window, a), math.max(fep, b)
  redis.call('HSET', keys[1], field, pack('>i8i8', window, fep))
  window_sweep(keys[1], tonumber(redis.call('HGET', keys[2], 'c') or NEVER) + 1)
  touch({keys[1]}, 1, 2 * ttl)  -- as a decision renews it
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
  bind()
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

-- (bucket, count) of each of ring r's buckets that counts, appended to out (the
-- string read once; the buckets this call moved from its cache).
local function ring_buckets(r, out)
  if r.total <= 0 then
    return out
  end
  local raw = r.cleared and '' or (redis.call('GET', r.key) or '')
  for b = r.lo, r.lo + r.n - 1 do
    local i = b % r.n
    local c = r.cache[i]
    if c == nil then
      c = #raw >= i * 4 + 4 and sunpack('>i4', raw, i * 4 + 1) or 0
    end
    if c ~= 0 then
      out[#out + 1] = b
      out[#out + 1] = c
    end
  end
  return out
end

-- counts(keys: meta, r24, r7, s7[, a number's warm-up ring][, the reach]; args:
-- geometry (4), now ('' for TIME)[, the number in warm-up or ''[, the volume path's
-- window (ms; 0: no reach), the path tier's start]]) -> the time used (never before
-- the scope's clock), used_24h, unique_7d, slots_7d, the 24 h ring's low bucket,
-- then (bucket, count) of each of its buckets that counts; with a warm-up ring,
-- then one more element: {its total, its low bucket, (bucket, count)...}
-- (warmup.counts); with the reach, then the recipients in it counted within the
-- path's window and since the tier began (the volume path's progress).
-- Reads only: the clock and rings are advanced in this call's memory, not saved.
local function scope_counts(keys, args)
  bind()
  local s = scope_open(keys, args, 1)
  local now = args[5] == '' and server_now() or tonumber(args[5])
  now = scope_clamp(s, now)
  local r = s.r24
  local out = ring_buckets(r, {now, r.total, s.r7.total, s.s7.total, r.lo})
  if args[6] and args[6] ~= '' then
    out[#out + 1] = warmup.counts(s, args[6], keys[5], now)
  end
  local window = tonumber(args[7] or 0)
  if window > 0 then
    local since = math.max(now - window + 1, tonumber(args[8]))
    out[#out + 1] = redis.call('ZCOUNT', keys[#keys], since, '+inf')
  end
  return out, s
end

local function counts(keys, args)
  local out = scope_counts(keys, args)
  return out
end

-- entries(keys: meta, r24, r7, s7, opt, pairs[, the number's warm-up ring], shard
-- hashes...; args: geometry (4), now ('' for TIME), the number, '1' if it is in
-- warm-up (its ring is then KEYS[7]) else '0', then per shard hash the
-- space-separated recipients in it) -> first, as one element, what counts answers
-- for the scope (and the number's warm-up ring) at now; then the number's
-- throughput TAT; then, as one element, the 7-day rings at now: {the recipients
-- ring's low bucket, its (bucket, count)..., -1, the slots ring's low bucket, its
-- (bucket, count)...}; then for each recipient that has any of them (most of a fresh
-- list has none), seven values: its place among the call's recipients (from 0, in
-- argument order), its scope entry, marketing entry, the number's window entry,
-- the number's warm-up entry, the number's pair entry (false where absent) and 1
-- if it opted out, else 0. Per shard hash that exists one HMGET of its
-- recipients' fields; one SMISMEMBER of their opt-outs and one HMGET of their pair
-- entries while there are any. Everything a plan of the list reads, in one call:
-- one state, no decision of any sidecar between its reads. Reads only (registered
-- no-writes); entries as stored (a pair entry the clock has passed may still be
-- there).
local function entries(keys, args)
  local warm = args[7] == '1'
  local first = warm and 8 or 7
  local scope, s = scope_counts({keys[1], keys[2], keys[3], keys[4], warm and keys[7] or nil},
                                {args[1], args[2], args[3], args[4], args[5],
                                 warm and args[6] or ''})
  local long = ring_buckets(s.r7, {s.r7.lo})
  long[#long + 1] = -1
  long[#long + 1] = s.s7.lo
  long = ring_buckets(s.s7, long)
  local out = {scope, redis.call('HGET', keys[1], 't:' .. args[6]) or false, long}
  local any_opt = redis.call('SCARD', keys[5]) > 0
  local any_pair = redis.call('HLEN', keys[6]) > 0
  local at, none = 0, {}
  for j = first, #keys do
    local list = args[j - first + 8]
    if redis.call('EXISTS', keys[j]) == 1 or any_opt or any_pair then
      local rs, fields, nfields = {}, {}, {}
      for r in string.gmatch(list, '%S+') do
        local nf = args[6] .. ':' .. r
        rs[#rs + 1] = r
        nfields[#nfields + 1] = nf
        fields[#fields + 1] = r
        fields[#fields + 1] = 'm' .. r
        fields[#fields + 1] = nf
        fields[#fields + 1] = warm and warmup.field(args[6], r) or nil
      end
      local w = warm and 4 or 3
      local v = chunked('HMGET', keys[j], fields)
      local opted = any_opt and chunked('SMISMEMBER', keys[5], rs) or none
      local pair = any_pair and chunked('HMGET', keys[6], nfields) or none
      for i = 1, #rs do
        local f, p, o = w * (i - 1), pair[i] or false, opted[i] or 0
        local se, mk, we, u = v[f + 1], v[f + 2], v[f + 3], warm and v[f + 4] or false
        if se or mk or we or u or p or o == 1 then
          local n = #out
          out[n + 1], out[n + 2], out[n + 3], out[n + 4] = at + i - 1, se, mk, we
          out[n + 5], out[n + 6], out[n + 7] = u, p, o
        end
      end
      at = at + #rs
    elseif list ~= '' then
      local _, spaces = string.gsub(list, ' ', '')
      at = at + spaces + 1
    end
  end
  return out
end

-- reconcile(keys: as decide's, then the mark (KEYS[8]) before the shard and
-- idempotency keys the rows name; args: as decide's with now 'r', then the rows'
-- sequence numbers packed in one string (SEQ each, increasing)): the admits a
-- sidecar decided on its own while Redis could not be reached (--store-failure
-- open), counted in order as decide counts an admit (forced: it cannot refuse what
-- was already sent), each time clamped to the scope's clock, but for the number's
-- throughput TAT (below). The mark (one per sidecar run and scope) holds the
-- highest sequence number counted: a row at or below it is skipped, so a call
-- repeated after a lost reply counts nothing twice. Answers the rows counted now.
local function reconcile(keys, args)
  local s, r, opted, ttl, nums = call_open(keys, args)
  local seqs = args[#args]
  -- Throughput: the rows were sent at their own times, in the past; counted at the
  -- clock one after another they would hold the number back for as long as they
  -- took. Its TAT becomes the later of its TAT before the call and the rows' own
  -- GCRA (each row at its time, carried on from the run's earlier calls in the
  -- mark): never earlier than either.
  local fields = {'s'}
  for j, num in ipairs(nums) do
    fields[j + 1] = 'o:' .. num.name
  end
  local got = redis.call('HMGET', keys[8], unpack(fields))
  local mark, counted = tonumber(got[1] or 0), 0
  local before, own = {}, {}
  for j, num in ipairs(nums) do
    own[num.name] = tonumber(got[j + 1] or NEVER)
  end
  s.out, s.at, s.wd = {}, 1, ADMIT
  for i = 1, r.n do
    local seq = sunpack(SEQ, seqs, 8 * i - 7)
    if seq > mark then
      local num, t = r.num[i], r.now[i]
      local flags = bit.bor(band(r.flags[i], bit.bnot(F_DRY_RUN)), F_FORCE)
      before[num.name] = before[num.name] or num.tat
      decide_one(s, num, t, r.rcpt[i], r.nfield[i], r.shard[i], flags, 0, opted[i])
      own[num.name] = math.max(own[num.name], t * 1000) + num.tput_iv
      num.tat = math.max(before[num.name], own[num.name])
      s.tat[num.name] = num.tat
      local kidx = r.kidx[i]
      if kidx > 0 then  -- a key admitted at another sidecar meanwhile keeps that admit
        redis.call('SET', keys[kidx], pack(ANSWER, unpack(s.out, 1, 8)), 'PX', r.kms[i], 'NX')
      end
      mark, counted = seq, counted + 1
    end
  end
  local w = {'s', mark}
  for j, num in ipairs(nums) do
    w[2 * j + 1], w[2 * j + 2] = fields[j + 1], own[num.name]
  end
  redis.call('HSET', keys[8], unpack(w))
  redis.call('PEXPIRE', keys[8], math.max(2 * ttl, 1))
  call_save(s, keys, r.n, ttl)
  return counted
end

-- warm-up ----------------------------------------------------------------------
-- A number in warm-up under portfolio scope (engine/reference/warmup.py): its own
-- ring of unique recipients in the 24 h window (tg3:{pf:S}:u:<number>) and, in the
-- recipient's shard hash, w<number>/<recipient> -> the last time the number
-- counted it (i8), read and written with the call's other fields of that hash.

function warmup.field(name, rcpt)
  return 'w' .. name .. '/' .. rcpt
end

function warmup.load(s, num, cap, key)
  if key == nil then
    return
  end
  s.warm = s.warm or {}
  local r = s.warm[num.name]
  if r == nil then
    r = ring(key, 'u:' .. num.name .. ':', s.r24.width, s.r24.window, false, s.meta)
    s.warm[num.name] = r
  end
  num.warm, num.cap = r, cap
end

-- The recipient's last counted time by the number (NEVER: none).
function warmup.look(s, num, rcpt, now)
  ring_advance(num.warm, now)
  local v = s.v[warmup.field(num.name, rcpt)]
  return v and sunpack('>i8', v) or NEVER
end

-- Step 6 for a number in warm-up: (decision, retry_at) when a count that binds has
-- no free slot: the scope's (when the send needs a new slot of it) or the
-- number's own (when the number has not counted the recipient in the window);
-- else nil.
function warmup.over_limit(s, num, needs_slot, limit, warm_last, now)
  local full = needs_slot and s.r24.total >= limit
  local warm_full = warm_last <= now - s.window and num.warm.total >= num.cap
  if not (full or warm_full) then
    return nil
  end
  local retry = now
  if full then
    if limit <= 0 then
      return REJECT, 0
    end
    retry = ring_next_free(s.r24, limit, now)
  end
  if warm_full then
    if num.cap <= 0 then
      return REJECT, 0
    end
    retry = math.max(retry, ring_next_free(num.warm, num.cap, now))
  end
  return RETRY_LATER, retry
end

-- A counting admit: the number's own count moves the recipient to now (its field
-- written with the shard hash k's other fields).
function warmup.count(s, num, rcpt, k, warm_last, now)
  ring_add(num.warm, warm_last, -1)
  ring_add(num.warm, now, 1)
  local f = warmup.field(num.name, rcpt)
  s.v[f] = pack('>i8', now)
  s.dirty[f] = k
end

function warmup.release(s, name, key, ckey, rcpt, t, prev)
  local num = {name = name}
  warmup.load(s, num, 0, key)
  local field = warmup.field(name, rcpt)
  local v = redis.call('HGET', ckey, field)
  if v and sunpack('>i8', v) == t then
    ring_add(num.warm, t, -1)
    ring_add(num.warm, prev, 1)
    redis.call('HSET', ckey, field, pack('>i8', prev))
  end
end

-- The number's own ring as of now (read only: advanced in memory): {its total, its
-- low bucket, then (bucket, count) of each bucket that counts}.
function warmup.counts(s, name, key, now)
  local num = {name = name}
  warmup.load(s, num, 0, key)
  ring_advance(num.warm, now)
  return ring_buckets(num.warm, {num.warm.total, num.warm.lo})
end

-- The rings of the numbers in warm-up: saved, their meta fields appended to out.
function warmup.save(s, out, ttl)
  for _, r in pairs(s.warm or {}) do
    ring_save(r)
    out[#out + 1] = r.name .. 'lo'
    out[#out + 1] = r.lo
    out[#out + 1] = r.name .. 'tot'
    out[#out + 1] = r.total
    if ttl > 0 then
      redis.call('PEXPIRE', r.key, ttl)
    end
  end
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

-- keys(keys: idempotency keys, all of one scope; no args): reads only. Per key what
-- it holds (its first admit and what it binds; false: nothing) and the ms it has
-- left (0 when it holds nothing): a batch checks its keys against them before it
-- decides anything (docs/redis.md, "How a decision is made").
local function keys_read(keys, args)
  local out = {}
  for j = 1, #keys do
    local v = redis.call('GET', keys[j])
    out[2 * j - 1] = v
    out[2 * j] = v and redis.call('PTTL', keys[j]) or 0
  end
  return out
end

local calls = {decide = decide, release = release, usage = usage,
               number_update = number_update, opt_out = opt_out, throughput = throughput,
               counts = counts, entries = entries, reconcile = reconcile,
               policy_snapshot = policy_snapshot}
calls.keys = keys_read
-- REGISTER
