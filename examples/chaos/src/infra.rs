//! The processes under test: one Redis (persistent) or a Redis Cluster, and the server
//! instances; the fault operations on them; and Redis look-ups for the final check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use redistribute_testkit::{RedisCluster, RedisServer, RespValue, ServerProcess};

/// How long a drained instance may take to exit.
const DRAIN_EXIT: Duration = Duration::from_secs(15);
/// Shards of the server's cluster key layout (its default).
const SHARDS: u32 = 16;

/// The storage under test.
#[derive(Debug)]
pub enum Storage {
    /// One `redis-server` with `appendonly yes` and `appendfsync always`.
    Single(RedisServer),
    /// A Redis Cluster: 3 primaries with one replica each.
    Cluster(RedisCluster),
}

/// Redis and the server instances.
#[derive(Debug)]
pub struct Infra {
    /// The storage.
    pub storage: Storage,
    /// The server instances, on fixed ports.
    pub servers: Vec<ServerProcess>,
}

/// The `redistribute` binary: `$CHAOS_SERVER_BIN`, else built (or found up to date) by the
/// testkit next to this tool's own profile, else `redistribute` next to this executable.
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHAOS_SERVER_BIN") {
        return bin.into();
    }
    if std::env::var_os("CARGO").is_none() {
        if let Some(sibling) = std::env::current_exe().ok().and_then(|exe| {
            let dir = exe.parent()?.to_path_buf();
            let bin = dir.join(format!("redistribute{}", std::env::consts::EXE_SUFFIX));
            bin.is_file().then_some(bin)
        }) {
            return sibling;
        }
    }
    redistribute_testkit::server_binary()
}

impl Infra {
    /// Starts the storage and `instances` servers.
    pub async fn start(bin: &Path, cluster: bool, instances: usize) -> Result<Infra> {
        let storage = if cluster {
            Storage::Cluster(
                RedisCluster::start(3, 1)
                    .await
                    .context("starting the cluster")?,
            )
        } else {
            Storage::Single(
                RedisServer::start_persistent()
                    .await
                    .context("starting redis-server")?,
            )
        };
        let mut args: Vec<String> = match &storage {
            Storage::Single(redis) => vec!["--redis".into(), redis.url()],
            Storage::Cluster(cluster) => cluster
                .urls()
                .into_iter()
                .flat_map(|url| ["--redis-cluster".to_owned(), url])
                .collect(),
        };
        args.extend(
            [
                "--group-claim-idle-ms",
                "2000",
                "--group-max-deliveries",
                "1000000",
                "--drain-timeout-ms",
                "3000",
                // Channel 0's small `maxlen` must trim, below the server's default floor.
                "--min-maxlen",
                "1",
            ]
            .map(String::from),
        );
        let mut infra = Infra {
            storage,
            servers: Vec::new(),
        };
        for _ in 0..instances {
            let server = ServerProcess::start(bin, &args)
                .await
                .context("starting a server instance")?;
            infra.servers.push(server);
        }
        Ok(infra)
    }

    /// `ws://127.0.0.1:PORT/ws` of every instance.
    pub fn ws_urls(&self) -> Vec<String> {
        self.servers.iter().map(ServerProcess::ws_url).collect()
    }

    /// The listen address of every instance.
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.servers.iter().map(ServerProcess::addr).collect()
    }

    /// SIGKILL instance `i`, wait `down`, start it again on the same port.
    pub async fn kill_server(&mut self, i: usize, down: Duration) -> Result<()> {
        let server = &mut self.servers[i];
        server.kill().await?;
        tokio::time::sleep(down).await;
        server.restart().await
    }

    /// SIGTERM instance `i` (drain), wait until it exited, then `down`, then start it again.
    pub async fn drain_server(&mut self, i: usize, down: Duration) -> Result<()> {
        let server = &mut self.servers[i];
        server.terminate()?;
        let status = server.wait_exit(DRAIN_EXIT).await?;
        if !status.success() {
            bail!("drained instance {} exited with {status}", server.addr());
        }
        tokio::time::sleep(down).await;
        server.restart().await
    }

    /// Restarts the single Redis: SIGKILL (`kill`) or SIGTERM, `down`, start on the same
    /// port and data directory.
    pub async fn restart_redis(&mut self, kill: bool, down: Duration) -> Result<()> {
        let Storage::Single(redis) = &mut self.storage else {
            bail!("not a single Redis");
        };
        if kill {
            redis.stop().await?;
        } else {
            redis.terminate().await?;
        }
        tokio::time::sleep(down).await;
        redis.restart().await
    }

    /// Manual failover (`CLUSTER FAILOVER` on its replica) of the primary numbered `pick`
    /// (modulo the primaries); returns (old primary, new primary) ports.
    pub async fn failover(&mut self, pick: usize) -> Result<(u16, u16)> {
        let Storage::Cluster(cluster) = &mut self.storage else {
            bail!("not a cluster");
        };
        let mut primaries = cluster.primaries().await?;
        primaries.sort_unstable();
        let old = primaries[pick % primaries.len()];
        let replica = *cluster
            .replicas_of(old)
            .await?
            .first()
            .with_context(|| format!("primary {old} has no replica"))?;
        cluster.failover(replica).await?;
        Ok((old, replica))
    }

    /// Makes sure every instance and all of Redis run (after the fault phase).
    pub async fn heal(&mut self) -> Result<()> {
        match &mut self.storage {
            Storage::Single(redis) => {
                if !redis.is_running() {
                    redis.restart().await?;
                }
            }
            Storage::Cluster(cluster) => cluster.wait_healthy(Duration::from_secs(30)).await?,
        }
        for server in &mut self.servers {
            if !server.is_running() {
                server.restart().await?;
            }
        }
        Ok(())
    }

    /// The Redis key of `channel` (the server's default prefix and shard count).
    pub fn stream_key(&self, channel: &str) -> String {
        match self.storage {
            Storage::Single(_) => format!("rd:{channel}"),
            Storage::Cluster(_) => format!("rd:{{{}}}:{channel}", fnv1a32(channel) % SHARDS),
        }
    }

    /// Runs a command on the node owning `key`.
    pub async fn command_for_key(&mut self, key: &str, args: &[&str]) -> Result<RespValue> {
        match &mut self.storage {
            Storage::Single(redis) => redis.command(args).await,
            Storage::Cluster(cluster) => {
                let port = cluster.primary_for_key(key).await?;
                cluster.command(port, args).await
            }
        }
    }

    /// Whether the entry `offset` is in the stream of `channel` (`XRANGE key o o`).
    pub async fn stored(&mut self, channel: &str, offset: &str) -> Result<bool> {
        let key = self.stream_key(channel);
        let reply = self
            .command_for_key(&key, &["XRANGE", &key, offset, offset])
            .await?
            .into_result()?;
        Ok(reply.as_array().is_some_and(|a| !a.is_empty()))
    }

    /// The entries of consumer group `group` of `channel` still pending (`XPENDING`), and the
    /// group's last delivered ID (`XINFO GROUPS`).
    pub async fn group_state(
        &mut self,
        channel: &str,
        group: &str,
    ) -> Result<(Vec<String>, Option<String>)> {
        let key = self.stream_key(channel);
        let pending = self
            .command_for_key(&key, &["XPENDING", &key, group, "-", "+", "1000000"])
            .await?
            .into_result()?;
        let ids = pending
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.as_array()?.first()?.as_str().map(str::to_owned))
            .collect();
        let groups = self
            .command_for_key(&key, &["XINFO", "GROUPS", &key])
            .await?
            .into_result()?;
        let mut last = None;
        for g in groups.as_array().unwrap_or_default() {
            let fields = g.as_array().unwrap_or_default();
            let get = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0].as_str() == Some(name))
                    .and_then(|kv| kv.get(1))
                    .and_then(RespValue::as_str)
            };
            if get("name") == Some(group) {
                last = get("last-delivered-id").map(str::to_owned);
            }
        }
        Ok((ids, last))
    }

    /// Writes every server's log (`server-<port>.log`) and Redis' (`redis-<port>.log`) into
    /// `dir`.
    pub fn save_logs(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for server in &self.servers {
            std::fs::write(
                dir.join(format!("server-{}.log", server.port())),
                server.logs(),
            )?;
        }
        match &self.storage {
            Storage::Single(redis) => std::fs::write(
                dir.join(format!("redis-{}.log", redis.port())),
                redis.logs(),
            )?,
            Storage::Cluster(cluster) => {
                for port in cluster.ports() {
                    std::fs::write(dir.join(format!("redis-{port}.log")), cluster.logs(port))?;
                }
            }
        }
        Ok(())
    }

    /// Kills every process (also done on drop; explicit so it happens before `exit`).
    pub async fn shutdown(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill().await;
        }
        match &mut self.storage {
            Storage::Single(redis) => {
                let _ = redis.stop().await;
            }
            Storage::Cluster(cluster) => {
                for port in cluster.ports() {
                    let _ = cluster.kill(port).await;
                }
            }
        }
    }
}

/// 32-bit FNV-1a, as the server shards channels in cluster mode.
fn fnv1a32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_the_reference_values() {
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9c_f968);
    }
}
