//! Stream key names: how a channel maps to a Redis key, in single-Redis and Cluster mode.
//!
//! Other producers that write into redistribute's streams must compute the same key:
//!
//! - **Single Redis** (`--redis`): `<prefix><channel>`, e.g. `rd:chat`.
//! - **Redis Cluster** (`--redis-cluster`): `<prefix>{<shard>}:<channel>`, e.g. `rd:{5}:chat`,
//!   where `shard = fnv1a32(channel bytes) % shards` in decimal, `fnv1a32` being 32-bit FNV-1a
//!   (offset basis `0x811c9dc5`, prime `0x01000193`) and `shards` the configured shard count
//!   (`--redis-shards`, default 16). The hash tag `{<shard>}` puts every channel of a shard into
//!   one hash slot, so one blocking `XREAD` can cover them all (Cluster rejects cross-slot
//!   commands), and the meta keys `<stream key>#trim` and `<stream key>#idem:<key>` share it.
//!
//! Each publish also appends to its shard's log (read by the live readers, see the engine's
//! docs): `<prefix>#log` with a single Redis, `<prefix>{<shard>}#log` in Cluster, with its
//! entry counter at `<log key>seq`. `#` never occurs in channel names, so no channel's key is a
//! log's.
//!
//! Changing the shard count (or the prefix) moves every channel to a new key: pick it once, or
//! migrate the streams.

/// Shard count when none is configured.
pub const DEFAULT_SHARDS: u16 = 16;

/// 32-bit FNV-1a of `bytes`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The shard (`0..shards`) of `channel`; `shards` must be at least 1.
pub fn shard_of(channel: &str, shards: u16) -> u16 {
    (fnv1a32(channel.as_bytes()) % u32::from(shards.max(1))) as u16
}

/// The stream key of `channel`: `<prefix><channel>` without shards (single Redis), or
/// `<prefix>{<shard>}:<channel>` with `Some(shards)` (Redis Cluster).
pub fn stream_key(prefix: &str, channel: &str, shards: Option<u16>) -> String {
    match shards {
        None => format!("{prefix}{channel}"),
        Some(n) => format!("{prefix}{{{}}}:{channel}", shard_of(channel, n)),
    }
}

/// The log key of `shard`: `<prefix>#log` with a single Redis (`shards` `None`, one log), or
/// `<prefix>{<shard>}#log` in Cluster (in the shard's hash slot, like its channels).
pub(crate) fn log_key(prefix: &str, shard: u16, shards: Option<u16>) -> String {
    match shards {
        None => format!("{prefix}#log"),
        Some(_) => format!("{prefix}{{{shard}}}#log"),
    }
}

/// The Redis Cluster hash slot of every key of `shard`.
pub(crate) fn shard_slot(shard: u16) -> u16 {
    fred::util::redis_keyslot(format!("{{{shard}}}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn keys_in_both_modes() {
        assert_eq!(stream_key("rd:", "chat", None), "rd:chat");
        let shard = shard_of("chat", 16);
        assert!(shard < 16);
        assert_eq!(
            stream_key("rd:", "chat", Some(16)),
            format!("rd:{{{shard}}}:chat")
        );
        // Every key of a shard, meta keys included, hashes to the shard's slot.
        let key = stream_key("rd:", "chat", Some(16));
        let slot = shard_slot(shard);
        assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot);
        assert_eq!(
            fred::util::redis_keyslot(format!("{key}#idem:k-1").as_bytes()),
            slot
        );
        assert_eq!(shard_of("anything", 1), 0);
        // The shard's log lives in the same slot, under a name no channel can have.
        let log = log_key("rd:", shard, Some(16));
        assert_eq!(log, format!("rd:{{{shard}}}#log"));
        assert_eq!(fred::util::redis_keyslot(log.as_bytes()), slot);
        assert_eq!(log_key("rd:", 0, None), "rd:#log");
    }

    #[test]
    fn channels_spread_over_all_shards() {
        let mut counts = [0u32; 16];
        for i in 0..1000 {
            counts[shard_of(&format!("ch{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 30), "{counts:?}");
    }
}
