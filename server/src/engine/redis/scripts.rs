//! Lua scripts that make publish and position reads atomic in Redis.
//!
//! Redis 7.0 does not record the last ID removed by a `MAXLEN` trim, so the publish script
//! trims itself (amortized: only once the stream exceeds `maxlen` by a slack) and stores the
//! highest removed ID in `<stream>#trim`. Idempotency keys live in `<stream>#idem:<key>`. `#`
//! cannot occur in channel names, so these keys never collide with a channel's stream, and in
//! cluster mode they share the stream's hash tag.
//!
//! Finding the exact watermark means reading the removed entries' IDs, so one publish removes
//! at most [`crate::engine::MAX_TRIM_PER_PUBLISH`] entries (and stops early past a byte budget
//! of removed fields): a publish with a `maxlen` far below the stream's length does bounded
//! work, and later publishes continue trimming. A watermark belongs to its stream: a publish
//! that creates the stream (it was deleted, or never existed) drops the old `#trim` first, and
//! [`READ`] and [`POSITION`] ignore (and [`POSITION`] deletes) a `#trim` whose stream is gone.

/// KEYS: stream, trim watermark, shard log, shard log sequence, [idempotency key].
/// ARGV: maxlen (0 = none), idempotency TTL ms, trim slack, most entries to trim, byte budget
/// of trimmed fields, max age ms (0 = none), shard log length (0 = no log entry), channel,
/// field, value, ...
/// Returns the entry ID (the first one when the idempotency key was seen before).
///
/// Trimming removes the oldest entries while the stream is longer than `maxlen` (once it is
/// longer than `maxlen` plus the slack) or while they are older than the max age (by Redis'
/// clock, `TIME`: an entry's ID is its creation time in ms), within the per-publish bounds.
///
/// Besides the channel's stream, each new entry is appended to its shard's log (see
/// [`super::log`]): `s <sequence> c <channel> o <entry ID> <field> <value> …`, where the
/// sequence counts the log's entries one by one (so a reader sees when entries it did not read
/// were trimmed), the log being trimmed to about its length.
pub(super) const PUBLISH: &str = r#"
if KEYS[5] then
  local prev = redis.call('GET', KEYS[5])
  if prev then return prev end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
local maxlen, age = tonumber(ARGV[1]), tonumber(ARGV[6])
local len, over, oldest = 0, 0, nil
if maxlen > 0 or age > 0 then len = redis.call('XLEN', KEYS[1]) end
if maxlen > 0 and len > maxlen + tonumber(ARGV[3]) then over = len - maxlen end
if age > 0 then
  local t = redis.call('TIME')
  oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if not first or tonumber(string.match(first[1], '^(%d+)')) >= oldest then oldest = nil end
end
if over > 0 or oldest then
  local k = tonumber(ARGV[4])
  local budget = tonumber(ARGV[5])
  local n, bytes, chunk, last, from = 0, 0, 16, nil, '-'
  local done = false
  while not done and n < k and bytes < budget do
    local got = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', math.min(chunk, k - n))
    if #got == 0 then break end
    for _, e in ipairs(got) do
      if n >= over and not (oldest and tonumber(string.match(e[1], '^(%d+)')) < oldest) then
        done = true
        break
      end
      for _, v in ipairs(e[2]) do bytes = bytes + #v end
      n = n + 1
      last = e[1]
      if bytes >= budget then break end
    end
    from = '(' .. got[#got][1]
    chunk = chunk * 2
  end
  if last then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', len - n)
    redis.call('SET', KEYS[2], last)
  end
end
if tonumber(ARGV[7]) > 0 then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 's', seq, 'c', ARGV[8], 'o', id, unpack(ARGV, 9))
end
if KEYS[5] then
  redis.call('SET', KEYS[5], id, 'PX', ARGV[2])
end
return id
"#;

/// KEYS: stream, trim watermark. Returns `{last-generated-id or '', watermark or ''}`; deletes a
/// watermark whose stream is gone.
pub(super) const POSITION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return {'', ''}
end
local t = redis.call('GET', KEYS[2]) or ''
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {info[i + 1], t} end
end
return {'', t}
"#;

/// KEYS: stream, trim watermark. ARGV: after (exclusive), most entries, byte budget, largest
/// deliverable entry (bytes of stored fields).
///
/// One catch-up page, atomically with the trim watermark: reads in growing chunks after
/// `after` until `limit` entries are taken or their encoded size (exact for stored JSON values and
/// plain names; Rust then cuts exactly) would pass the budget (at least one entry). An entry larger than the largest deliverable one is skipped when no
/// entry was taken yet (reported as `skipped`), else the page ends before it. Skipped entries
/// count towards `limit`, so a page does bounded work. Returns
/// `{watermark or '', skipped through or '', {entries}}`.
pub(super) const READ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', '', {}} end
local wm = redis.call('GET', KEYS[2]) or ''
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local largest = tonumber(ARGV[4])
local out, seen, bytes, skipped, chunk, from = {}, 0, 0, '', 8, '(' .. ARGV[1]
while seen < limit do
  local want = math.min(chunk, limit - seen)
  local got = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', want)
  local stop = #got < want
  for _, e in ipairs(got) do
    local f, size = e[2], 0
    for i = 1, #f do size = size + #f[i] end
    if size > largest then
      if #out > 0 then stop = true break end
      skipped = e[1]
    else
      local cost = size + 2 * #f + 24 + #e[1]
      if #out > 0 then cost = cost + 1 end
      if #out > 0 and bytes + cost > budget then stop = true break end
      bytes = bytes + cost
      out[#out + 1] = e
    end
    seen = seen + 1
    if seen >= limit then break end
  end
  if stop or #got == 0 then break end
  from = '(' .. got[#got][1]
  chunk = chunk * 2
end
return {wm, skipped, out}
"#;

/// KEYS: stream, trim watermark. ARGV: group, start ID (`$`, `0` or an ID), create (`1`/`0`).
/// Creates the group (and the stream, when create is `1`) unless it exists; returns its last
/// delivered ID, or `''` when the stream does not exist and create is `0` (nothing is written).
/// A stream it creates starts without a watermark (like a publish that creates one), so a stale
/// `#trim` of a deleted stream never reports gaps in the new one.
pub(super) const GROUP_CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[3] ~= '1' then return '' end
  redis.call('DEL', KEYS[2])
end
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP') then return r end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then return last end
end
return redis.error_reply('NOGROUP group vanished')
"#;

/// KEYS: stream. ARGV: group, consumer, count, start ID.
/// The consumer's own pending entries after the start ID (`XREADGROUP … <id>`, which counts a
/// delivery), each with its delivery count (`XPENDING`), atomically; entries deleted from the
/// stream while pending are acknowledged and left out.
/// Returns `{{entries}, {delivery counts}}`.
pub(super) const GROUP_PENDING: &str = r#"
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], ARGV[4])
local entries, counts = {}, {}
if not r or not r[1] then return {entries, counts} end
for _, e in ipairs(r[1][2]) do
  if type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    entries[#entries + 1] = e
    counts[#counts + 1] = (p[1] and p[1][4]) or 1
  else
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
  end
end
return {entries, counts}
"#;

/// KEYS: stream, the group's turn record (a hash: consumer -> `instance room expiry-ms
/// last-served`, field `""`: the serve counter). ARGV: group, instance, lease ms, count, then
/// `consumer, room` for each of the instance's consumers.
/// Renews the instance's consumers (dropping its others and every expired one), then hands
/// new entries one at a time (`XREADGROUP … >` as the consumer) to the consumer with the most
/// room (ties: served least recently), while that consumer is the instance's.
/// Returns `{deferred (1: stopped at another instance's consumer with entries left), consumer,
/// {entries}, consumer, {entries}, …}`.
pub(super) const GROUP_TURNS: &str = r#"
local reg, group, inst = KEYS[2], ARGV[1], ARGV[2]
local lease, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = {}
for i = 5, #ARGV, 2 do mine[ARGV[i]] = tonumber(ARGV[i + 1]) end
local cons, seq = {}, 0
local all = redis.call('HGETALL', reg)
for i = 1, #all, 2 do
  local name, v = all[i], all[i + 1]
  if name == '' then
    seq = tonumber(v)
  else
    local who, room, exp, last = string.match(v, '^(%S+) (%d+) (%d+) (%d+)$')
    if mine[name] ~= nil then
      cons[name] = {inst, mine[name], tonumber(last or '0')}
    elseif who == nil or who == inst or tonumber(exp) < now then
      redis.call('HDEL', reg, name)
    else
      cons[name] = {who, tonumber(room), tonumber(last)}
    end
  end
end
for name, room in pairs(mine) do
  if cons[name] == nil then cons[name] = {inst, room, 0} end
end
local got, order, taken, deferred = {}, {}, 0, 0
while taken < limit do
  local best, br, bl
  for name, c in pairs(cons) do
    if c[2] > 0 and (best == nil or c[2] > br
        or (c[2] == br and (c[3] < bl or (c[3] == bl and name < best)))) then
      best, br, bl = name, c[2], c[3]
    end
  end
  if best == nil then break end
  if cons[best][1] ~= inst then
    local tip = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    if tip[1] then
      local done = '0-0'
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
        local n, l
        for j = 1, #g, 2 do
          if g[j] == 'name' then n = g[j + 1] end
          if g[j] == 'last-delivered-id' then l = g[j + 1] end
        end
        if n == group then done = l end
      end
      local a1, a2 = string.match(tip[1][1], '^(%d+)-(%d+)$')
      local b1, b2 = string.match(done, '^(%d+)-(%d+)$')
      a1, a2, b1, b2 = tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)
      if a1 > b1 or (a1 == b1 and a2 > b2) then deferred = 1 end
    end
    break
  end
  local r = redis.call('XREADGROUP', 'GROUP', group, best, 'COUNT', 1, 'STREAMS', KEYS[1], '>')
  if not r or not r[1] or not r[1][2][1] then break end
  if got[best] == nil then got[best] = {}; order[#order + 1] = best end
  local list = got[best]
  list[#list + 1] = r[1][2][1]
  seq = seq + 1
  cons[best][2] = cons[best][2] - 1
  cons[best][3] = seq
  taken = taken + 1
end
local exp = now + lease
for name, c in pairs(cons) do
  if c[1] == inst then
    redis.call('HSET', reg, name, inst .. ' ' .. c[2] .. ' ' .. exp .. ' ' .. c[3])
  end
end
redis.call('HSET', reg, '', seq)
redis.call('PEXPIRE', reg, lease * 4)
local out = {deferred}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = got[name]
end
return out
"#;

/// KEYS: stream. ARGV: group, consumer, min idle ms, start ID, count.
/// `XAUTOCLAIM`, then each claimed entry's delivery count (`XPENDING`), atomically.
/// Returns `{next start, {entries}, {delivery counts}}`.
pub(super) const GROUP_CLAIM: &str = r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries, counts = {}, {}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    entries[#entries + 1] = e
    counts[#counts + 1] = (p[1] and p[1][4]) or 1
  end
end
return {r[1], entries, counts}
"#;

/// KEYS: stream, trim watermark, stream, trim watermark, ... (pairs).
/// ARGV: clock skew ms (negative: no clock check), record (`1`/`0`), create (`1`/`0`), one ID
/// per pair.
/// For each pair whose stream's last-generated ID is below the given ID, raises it with `XSETID`
/// (creating an empty stream if there is none and create is `1`; with `0` a missing stream is
/// left missing), so new entries come after that ID; refused when
/// the ID is more than the skew ahead of Redis' clock. With record `1` the raised-over range is
/// recorded as removed: the trim watermark (and the stream's max deleted ID) becomes the ID.
/// Returns `{last-generated-id or '', watermark or '', raised 0/1}` per pair.
pub(super) const RAISE: &str = r#"
local function split(id) return string.match(id, '^(%d+)-(%d+)$') end
local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
local limit
if tonumber(ARGV[1]) >= 0 then
  local t = redis.call('TIME')
  limit = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
end
local out = {}
for i = 1, #KEYS, 2 do
  local key, trim, to = KEYS[i], KEYS[i + 1], ARGV[3 + (i + 1) / 2]
  local exists = redis.call('EXISTS', key) == 1
  local last = '0-0'
  if exists then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
    end
  end
  local raised = 0
  if split(to) and less(last, to) and (not limit or tonumber((split(to))) <= limit)
      and (exists or ARGV[3] == '1') then
    if not exists then
      redis.call('XGROUP', 'CREATE', key, 'redistribute:raise', '$', 'MKSTREAM')
      redis.call('XGROUP', 'DESTROY', key, 'redistribute:raise')
      exists = true
    end
    if ARGV[2] == '1' then
      redis.call('XSETID', key, to, 'MAXDELETEDID', to)
      redis.call('SET', trim, to)
    else
      redis.call('XSETID', key, to)
    end
    last = to
    raised = 1
  end
  if not exists then last = '' end
  out[#out + 1] = {last, redis.call('GET', trim) or '', raised}
end
return out
"#;

/// KEYS: stream, trim watermark, stream, trim watermark, … (pairs).
/// [`POSITION`] for each pair: `{{last-generated-id or '', watermark or ''}, …}`.
pub(super) const POSITIONS: &str = r#"
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('DEL', KEYS[i + 1])
    out[#out + 1] = {'', ''}
  else
    local t = redis.call('GET', KEYS[i + 1]) or ''
    local last = ''
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
    end
    out[#out + 1] = {last, t}
  end
end
return out
"#;

/// KEYS: shard log, shard log sequence.
/// Where the log ends: `{ID of its last entry or '', that entry's sequence (or the sequence
/// counter when the log has no entry, '0' when neither exists)}`.
pub(super) const LOG_TIP: &str = r#"
local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if e[1] then return {e[1][1], e[1][2][2]} end
return {'', redis.call('GET', KEYS[2]) or '0'}
"#;

/// KEYS: stream, trim watermark. ARGV: after (exclusive), through (inclusive), most entries,
/// byte budget, largest deliverable entry (bytes of stored fields).
///
/// One reverse history page, atomically with the trim watermark: like [`READ`], but going back
/// from `through` (`XREVRANGE`) down to `after`, in growing chunks. Entries larger than the
/// largest deliverable one are left out (they count towards `limit`). Returns
/// `{watermark or '', {entries, newest first}}`.
pub(super) const READ_BACK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', {}} end
local wm = redis.call('GET', KEYS[2]) or ''
local limit = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local largest = tonumber(ARGV[5])
local out, seen, bytes, chunk, low, high = {}, 0, 0, 8, '(' .. ARGV[1], ARGV[2]
while seen < limit do
  local want = math.min(chunk, limit - seen)
  local got = redis.call('XREVRANGE', KEYS[1], high, low, 'COUNT', want)
  local stop = #got < want
  for _, e in ipairs(got) do
    local f, size = e[2], 0
    for i = 1, #f do size = size + #f[i] end
    if size <= largest then
      local cost = size + 2 * #f + 24 + #e[1]
      if #out > 0 then cost = cost + 1 end
      if #out > 0 and bytes + cost > budget then stop = true break end
      bytes = bytes + cost
      out[#out + 1] = e
    end
    seen = seen + 1
    if seen >= limit then break end
  end
  if stop or #got == 0 then break end
  high = '(' .. got[#got][1]
  chunk = chunk * 2
end
return {wm, out}
"#;

/// KEYS: stream. ARGV: through (inclusive), n. Returns the ID of the `n`-th newest entry at or
/// before `through`, or `''` when the stream holds fewer.
pub(super) const OFFSET_BACK: &str = r#"
local n = tonumber(ARGV[2])
local got = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', n)
if #got < n then return '' end
return got[#got][1]
"#;
