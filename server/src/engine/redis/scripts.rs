//! Lua scripts that make publish and position reads atomic in Redis.
//!
//! Redis 7.0 does not record the last ID removed by a `MAXLEN` trim, so the publish script
//! trims itself (amortized: only once the stream exceeds `maxlen` by a slack) and stores the
//! highest removed ID in `<stream>#trim`. Idempotency keys live in `<stream>#idem:<key>`. `#`
//! cannot occur in channel names, so these keys never collide with a channel's stream, and in
//! cluster mode they share the stream's hash tag.

/// KEYS: stream, trim watermark, [idempotency key].
/// ARGV: maxlen (0 = none), idempotency TTL ms, trim slack, field, value, ...
/// Returns the entry ID (the first one when the idempotency key was seen before).
pub const PUBLISH: &str = r#"
if KEYS[3] then
  local prev = redis.call('GET', KEYS[3])
  if prev then return prev end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
local maxlen = tonumber(ARGV[1])
if maxlen > 0 then
  local len = redis.call('XLEN', KEYS[1])
  if len > maxlen + tonumber(ARGV[3]) then
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - maxlen)
    redis.call('XTRIM', KEYS[1], 'MAXLEN', maxlen)
    redis.call('SET', KEYS[2], old[#old][1])
  end
end
if KEYS[3] then
  redis.call('SET', KEYS[3], id, 'PX', ARGV[2])
end
return id
"#;

/// KEYS: stream, trim watermark. Returns `{last-generated-id or '', watermark or ''}`.
pub const POSITION: &str = r#"
local t = redis.call('GET', KEYS[2]) or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', t} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {info[i + 1], t} end
end
return {'', t}
"#;

/// KEYS: stream. ARGV: group, start ID (`$`, `0` or an ID).
/// Creates the group (and the stream) unless it exists; returns its last delivered ID.
pub const GROUP_CREATE: &str = r#"
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

/// KEYS: stream. ARGV: group, consumer, min idle ms, start ID, count.
/// `XAUTOCLAIM`, then each claimed entry's delivery count (`XPENDING`), atomically.
/// Returns `{next start, {entries}, {delivery counts}}`.
pub const GROUP_CLAIM: &str = r#"
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
/// ARGV: clock skew ms (negative: no clock check), record (`1`/`0`), one ID per pair.
/// For each pair whose stream's last-generated ID is below the given ID, raises it with `XSETID`
/// (creating an empty stream if there is none), so new entries come after that ID; refused when
/// the ID is more than the skew ahead of Redis' clock. With record `1` the raised-over range is
/// recorded as removed: the trim watermark (and the stream's max deleted ID) becomes the ID.
/// Returns `{last-generated-id or '', watermark or '', raised 0/1}` per pair.
pub const RAISE: &str = r#"
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
  local key, trim, to = KEYS[i], KEYS[i + 1], ARGV[2 + (i + 1) / 2]
  local exists = redis.call('EXISTS', key) == 1
  local last = '0-0'
  if exists then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
    end
  end
  local raised = 0
  if split(to) and less(last, to) and (not limit or tonumber((split(to))) <= limit) then
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
