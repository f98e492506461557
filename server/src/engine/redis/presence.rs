//! The Redis presence store ([`PresenceStore`]): Lua scripts over five keys per channel, all in
//! the channel's hash slot (they extend its stream key, which carries the shard's hash tag in
//! Cluster mode):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<stream key>#presence` | sorted set | client id → expiry (ms, Redis clock) |
//! | `<stream key>#presence:info` | hash | client id → member JSON, `\n`, user key |
//! | `<stream key>#presence:users` | hash | user key (`u:<sub>`, or `c:<client>` without one) → members |
//! | `<stream key>#presence:log` | stream | changes, entry ID `<seq>-0`, fields `k` (`j`/`l`) and `m` (member JSON) |
//! | `<stream key>#presence:seq` | string | the last change's sequence number |
//!
//! Every script first removes the expired members (scores up to Redis's `TIME`), logging their
//! leaves, so each change is logged once, by the call that made it, however many instances
//! prune. Writes set every key's expiry to [`KEY_LIFETIME_TTLS`] member expiries, so the keys
//! of a channel nobody refreshes any more vanish too.

use std::sync::Arc;

use async_trait::async_trait;
use fred::types::Value;
use redistribute_protocol::PresenceMember;

use super::client::{eval, map_err};
use super::Shared;
use crate::engine::EngineError;
use crate::presence::store::{cap_changes, user_key, Bounds, Changes, PresenceStore};

/// The keys of a channel live this many member expiries after the last write.
pub(crate) const KEY_LIFETIME_TTLS: u32 = 10;

/// Shared head of every script: the clock, the change log and pruning.
/// `KEYS`: members, info, users, log, seq. `ARGV[1..4]`: ttl ms, max members, log length, key
/// lifetime ms.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function split(v)
  local i = string.find(v, '\n', 1, true)
  if not i then return v, nil end
  return string.sub(v, 1, i - 1), string.sub(v, i + 1)
end
local function log(kind, json)
  local n = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], n .. '-0', 'k', kind, 'm', json)
end
local function remove(c)
  local v = redis.call('HGET', KEYS[2], c)
  redis.call('ZREM', KEYS[1], c)
  redis.call('HDEL', KEYS[2], c)
  local json, uk = '{"client":"' .. c .. '"}', nil
  if v then json, uk = split(v) end
  if uk and redis.call('HINCRBY', KEYS[3], uk, -1) <= 0 then
    redis.call('HDEL', KEYS[3], uk)
  end
  log('l', json)
end
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do remove(c) end
local function keep()
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
"#;

/// `ARGV[5..]`: pairs of client id and stored value. Returns the client ids refused.
const JOIN: &str = r#"
local refused = {}
local expiry = now + tonumber(ARGV[1])
local max = tonumber(ARGV[2])
for i = 5, #ARGV, 2 do
  local c, v = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], c) then
    redis.call('ZADD', KEYS[1], expiry, c)
  elseif redis.call('ZCARD', KEYS[1]) >= max then
    refused[#refused + 1] = c
  else
    redis.call('ZADD', KEYS[1], expiry, c)
    redis.call('HSET', KEYS[2], c, v)
    local json, uk = split(v)
    redis.call('HINCRBY', KEYS[3], uk, 1)
    log('j', json)
  end
end
keep()
return refused
"#;

/// `ARGV[5..]`: client ids. Returns those that are not members.
const REFRESH: &str = r#"
local missing = {}
local expiry = now + tonumber(ARGV[1])
for i = 5, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
keep()
return missing
"#;

/// `ARGV[5..]`: client ids.
const LEAVE: &str = r#"
for i = 5, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then remove(ARGV[i]) end
end
return 0
"#;

/// Returns the stored values of every member.
const MEMBERS: &str = r#"
return redis.call('HVALS', KEYS[2])
"#;

/// Returns `{members, users}`.
const COUNTS: &str = r#"
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3])}
"#;

/// `KEYS`: log, seq. `ARGV`: cursor (empty: none), limit. Returns `{end, missed, {kind, json,
/// …}}`: with more than `limit` changes after the cursor, none of them and their count.
const CHANGES: &str = r#"
local tip = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == '' then return {tip, 0, {}} end
local cursor = tonumber(ARGV[1])
if tip < cursor then cursor = 0 end
if tip == cursor then return {tip, 0, {}} end
local limit = tonumber(ARGV[2])
if tip - cursor > limit then return {tip, tip - cursor, {}} end
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor .. '-0', '+', 'COUNT', limit)
local out = {}
local missed = tip - cursor
if #entries > 0 then
  local first = tonumber(string.match(entries[1][1], '^(%d+)-'))
  missed = first - cursor - 1
end
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'k' then out[#out + 1] = f[i + 1] end
  end
  for i = 1, #f, 2 do
    if f[i] == 'm' then out[#out + 1] = f[i + 1] end
  end
end
return {tip, missed, out}
"#;

/// The Redis presence store; see the module docs.
pub(crate) struct RedisPresence {
    shared: Arc<Shared>,
    scripts: &'static Scripts,
}

/// The scripts with their prelude, built once.
struct Scripts {
    join: &'static str,
    refresh: &'static str,
    leave: &'static str,
    members: &'static str,
    counts: &'static str,
}

fn with_prelude(body: &str) -> &'static str {
    Box::leak(format!("{PRELUDE}{body}").into_boxed_str())
}

static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();

impl RedisPresence {
    pub(super) fn new(shared: Arc<Shared>) -> RedisPresence {
        let scripts = SCRIPTS.get_or_init(|| Scripts {
            join: with_prelude(JOIN),
            refresh: with_prelude(REFRESH),
            leave: with_prelude(LEAVE),
            members: with_prelude(MEMBERS),
            counts: with_prelude(COUNTS),
        });
        RedisPresence { shared, scripts }
    }

    fn keys(&self, channel: &str) -> Vec<String> {
        let key = self.shared.stream_key(channel);
        vec![
            format!("{key}#presence"),
            format!("{key}#presence:info"),
            format!("{key}#presence:users"),
            format!("{key}#presence:log"),
            format!("{key}#presence:seq"),
        ]
    }

    async fn run(
        &self,
        script: &'static str,
        channel: &str,
        bounds: Bounds,
        more: impl IntoIterator<Item = String>,
    ) -> Result<Value, EngineError> {
        let ttl = bounds.ttl.as_millis().max(1) as u64;
        let mut args = vec![
            ttl.to_string(),
            bounds.max_members.to_string(),
            bounds.log_len.max(1).to_string(),
            (ttl * u64::from(KEY_LIFETIME_TTLS)).to_string(),
        ];
        args.extend(more);
        eval(
            &self.shared.writer,
            &self.shared.options(),
            script,
            self.keys(channel),
            args,
        )
        .await
        .map_err(map_err)
    }
}

/// The stored value of a member: its JSON, a newline, its user key.
fn stored(member: &PresenceMember) -> String {
    let json = serde_json::to_string(member).expect("members serialize");
    format!("{json}\n{}", user_key(member))
}

fn member_of(json: &str) -> Result<PresenceMember, EngineError> {
    serde_json::from_str(json)
        .map_err(|e| EngineError::Internal(format!("unreadable presence member {json:?}: {e}")))
}

fn strings(reply: Value) -> Result<Vec<String>, EngineError> {
    match reply {
        Value::Array(items) => items
            .into_iter()
            .map(|v| {
                v.into_string()
                    .ok_or_else(|| EngineError::Internal("presence reply is not text".into()))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(EngineError::Internal(format!(
            "unexpected presence reply {other:?}"
        ))),
    }
}

fn integer(value: &Value) -> Result<u64, EngineError> {
    value
        .as_u64()
        .ok_or_else(|| EngineError::Internal(format!("unexpected presence count {value:?}")))
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        channel: &str,
        members: &[PresenceMember],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError> {
        let args = members.iter().flat_map(|m| [m.client.clone(), stored(m)]);
        strings(self.run(self.scripts.join, channel, bounds, args).await?)
    }

    async fn refresh(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError> {
        let args = clients.iter().cloned();
        strings(
            self.run(self.scripts.refresh, channel, bounds, args)
                .await?,
        )
    }

    async fn leave(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<(), EngineError> {
        let args = clients.iter().cloned();
        self.run(self.scripts.leave, channel, bounds, args).await?;
        Ok(())
    }

    async fn members(
        &self,
        channel: &str,
        bounds: Bounds,
    ) -> Result<Vec<PresenceMember>, EngineError> {
        let values = strings(self.run(self.scripts.members, channel, bounds, []).await?)?;
        values
            .iter()
            .map(|v| member_of(v.split('\n').next().unwrap_or_default()))
            .collect()
    }

    async fn counts(&self, channel: &str, bounds: Bounds) -> Result<(u64, u64), EngineError> {
        match self.run(self.scripts.counts, channel, bounds, []).await? {
            Value::Array(items) if items.len() == 2 => {
                Ok((integer(&items[0])?, integer(&items[1])?))
            }
            other => Err(EngineError::Internal(format!(
                "unexpected presence counts {other:?}"
            ))),
        }
    }

    async fn changes(
        &self,
        channel: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Changes, EngineError> {
        let keys = self.keys(channel);
        let keys = vec![keys[3].clone(), keys[4].clone()];
        let args = vec![
            cursor.map(|c| c.to_string()).unwrap_or_default(),
            limit.to_string(),
        ];
        let reply = eval(
            &self.shared.writer,
            &self.shared.options(),
            CHANGES,
            keys,
            args,
        )
        .await
        .map_err(map_err)?;
        let Value::Array(mut items) = reply else {
            return Err(EngineError::Internal("unexpected presence changes".into()));
        };
        if items.len() != 3 {
            return Err(EngineError::Internal("unexpected presence changes".into()));
        }
        let flat = strings(items.pop().unwrap_or(Value::Null))?;
        let missed = integer(&items[1])?;
        let end = integer(&items[0])?;
        let mut changes = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            if let [kind, json] = pair {
                changes.push((kind == "j", member_of(json)?));
            }
        }
        Ok(cap_changes(
            Changes {
                changes,
                missed,
                cursor: end,
            },
            limit,
        ))
    }
}
