//! A throw-away `redis-server` per test: free port, no persistence (or, on request, a durable
//! append-only file kept across restarts), killed on drop.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::free_port;
use crate::process::{self, POLL_INTERVAL};
use crate::resp::{RespConnection, RespValue};

/// How long a launch may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::restart`] keeps retrying to bind the old port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports [`RedisServer::start`] tries when another process takes one first.
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process on 127.0.0.1 and a free port, without persistence
/// (`--save "" --appendonly no`; see [`RedisServer::start_persistent`] for a durable one),
/// working in its own temporary directory.
///
/// The binary is `redis-server` from `PATH`, or the path in the environment variable
/// `TESTKIT_REDIS_SERVER`. The process is killed when this value is dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// Started with [`RedisServer::start_persistent`]: AOF on, data kept across restarts.
    persistent: bool,
}

/// What one launch attempt came to.
enum Launch {
    /// PING answered: the server is ready.
    Ready(Child),
    /// The process exited before answering (typically: the port was taken).
    Exited(String),
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits (at most 10 s) until it answers PING.
    pub async fn start() -> Result<RedisServer> {
        Self::start_with(false).await
    }

    /// Like [`RedisServer::start`], but durable: append-only file on with
    /// `appendfsync always` (every write is fsynced before Redis replies), so everything
    /// Redis acknowledged survives a SIGKILL, and [`RedisServer::restart`] reloads the data
    /// from the same directory instead of starting empty.
    pub async fn start_persistent() -> Result<RedisServer> {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("redistribute-redis-")
            .tempdir()
            .context("creating a temporary directory for redis-server")?;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match launch(&dir, port, Instant::now() + START_TIMEOUT, persistent).await? {
                Launch::Ready(child) => {
                    return Ok(RedisServer {
                        port,
                        child: Some(child),
                        dir,
                        persistent,
                    })
                }
                Launch::Exited(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        bail!(
            "redis-server failed to start {START_ATTEMPTS} times:\n{}",
            failures.join("\n")
        )
    }

    /// The TCP port Redis listens on (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address Redis listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The URL to hand to the server's `--redis` flag: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running `redis-server`, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (false after [`RedisServer::stop`] or a crash).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Opens a new connection, e.g. for blocking commands or `CLIENT` commands that need one.
    pub async fn connect(&self) -> Result<RespConnection> {
        RespConnection::connect(self.addr()).await
    }

    /// Runs one command on a fresh connection (so it works across restarts).
    ///
    /// Error replies come back as [`RespValue::Error`]; use [`RespValue::into_result`] to turn
    /// them into `Err`.
    pub async fn command(&self, args: &[&str]) -> Result<RespValue> {
        self.connect().await?.command(args).await
    }

    /// `INFO commandstats` as a map from command name to `calls`.
    ///
    /// Names are lowercase as Redis prints them, subcommands joined with `|`: `"xread"`,
    /// `"xadd"`, `"evalsha"`, `"client|unblock"`. Commands never called are absent.
    pub async fn info_commandstats(&self) -> Result<HashMap<String, u64>> {
        let reply = self
            .command(&["INFO", "commandstats"])
            .await?
            .into_result()?;
        let text = reply
            .as_str()
            .with_context(|| format!("INFO commandstats returned {reply}"))?;
        Ok(parse_commandstats(text))
    }

    /// `CONFIG RESETSTAT`: zeroes the command statistics (and other counters).
    pub async fn config_resetstat(&self) -> Result<()> {
        self.command(&["CONFIG", "RESETSTAT"])
            .await?
            .into_result()?;
        Ok(())
    }

    /// Kills the process (SIGKILL) and waits until it is gone, so the port is free. Data is lost.
    /// Does nothing if it is not running.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            process::kill_and_wait(&mut child).await?;
        }
        Ok(())
    }

    /// Shuts Redis down cleanly (SIGTERM: a persistent server flushes its append-only file)
    /// and waits, at most 10 s, until it has exited; SIGKILL if it has not by then. Does
    /// nothing if it is not running.
    pub async fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait()?.is_none() {
                process::terminate(child.id())?;
                if process::wait_exit(&mut child, Duration::from_secs(10))
                    .await?
                    .is_none()
                {
                    process::kill_and_wait(&mut child).await?;
                    bail!("redis-server did not exit within 10 s of SIGTERM (killed)");
                }
            }
        }
        Ok(())
    }

    /// Starts Redis again on the same port (stopping it first if it runs): with an empty
    /// dataset, or for a server from [`RedisServer::start_persistent`] with the data of its
    /// append-only file. Retries binding for up to 10 s in case the port is still held.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match launch(
                &self.dir,
                self.port,
                deadline.max(Instant::now() + START_TIMEOUT),
                self.persistent,
            )
            .await?
            {
                Launch::Ready(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Launch::Exited(why) if Instant::now() >= deadline => {
                    bail!(
                        "redis-server could not restart on port {}: {why}",
                        self.port
                    )
                }
                Launch::Exited(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Everything `redis-server` printed so far, across restarts.
    pub fn logs(&self) -> String {
        process::read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        log_path(&self.dir)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            process::kill_on_drop(child);
        }
    }
}

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("redis.log")
}

/// Spawns `redis-server` on `port` and waits until it answers PING, it exits, or `deadline`.
/// `persistent`: append-only file on, fsynced on every write.
async fn launch(dir: &TempDir, port: u16, deadline: Instant, persistent: bool) -> Result<Launch> {
    let bin = std::env::var_os("TESTKIT_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let log = log_path(dir);
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""]);
    if persistent {
        cmd.args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.arg("--dir").arg(dir.path());
    let mut child = process::spawn_logged(&mut cmd, &log).with_context(|| {
        format!(
            "is redis-server installed? (looked for {bin:?}; set TESTKIT_REDIS_SERVER to override)"
        )
    })?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Launch::Exited(format!(
                "exited with {status}; log tail:\n{}",
                process::log_tail(&log, 10)
            )));
        }
        if ping(addr).await {
            return Ok(Launch::Ready(child));
        }
        if Instant::now() >= deadline {
            process::kill_and_wait(&mut child).await?;
            bail!(
                "redis-server on port {port} did not answer PING in time; log tail:\n{}",
                process::log_tail(&log, 10)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether Redis at `addr` answers PING with PONG within half a second.
async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut conn = RespConnection::connect_timeout(addr, Duration::from_millis(500)).await?;
        conn.command_timeout(&["PING"], Duration::from_millis(500))
            .await
    };
    matches!(attempt.await, Ok(RespValue::Simple(s)) if s == "PONG")
}

/// Parses the `cmdstat_<name>:calls=<n>,…` lines of `INFO commandstats`.
fn parse_commandstats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn must<T>(fut: impl std::future::Future<Output = Result<T>>) -> T {
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("test step timed out")
            .unwrap()
    }

    #[test]
    fn parses_commandstats_lines() {
        let text = "# Commandstats\r\n\
            cmdstat_xread:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_client|unblock:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_EVALSHA:calls=1,usec=1\r\n\
            garbage\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(stats.len(), 3);
        assert_eq!(stats["xread"], 12);
        assert_eq!(stats["client|unblock"], 3);
        assert_eq!(stats["evalsha"], 1);
    }

    #[tokio::test]
    async fn ping_set_get_and_commandstats() {
        let redis = must(RedisServer::start()).await;
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
        let pong = must(redis.command(&["PING"])).await;
        assert_eq!(pong, RespValue::Simple("PONG".into()));
        let ok = must(redis.command(&["SET", "greeting", "hello world"])).await;
        assert_eq!(ok.as_str(), Some("OK"));
        let got = must(redis.command(&["GET", "greeting"])).await;
        assert_eq!(got, RespValue::Bulk(b"hello world".to_vec()));
        assert!(must(redis.command(&["GET", "missing"])).await.is_nil());
        let err = must(redis.command(&["NOSUCHCOMMAND"])).await;
        assert!(matches!(err, RespValue::Error(_)), "{err}");
        assert!(err.into_result().is_err());

        must(redis.config_resetstat()).await;
        let mut conn = must(redis.connect()).await;
        let id = must(conn.command(&["XADD", "s", "*", "k", "v"])).await;
        assert!(id.as_str().unwrap().contains('-'), "{id}");
        let read = must(conn.command(&["XREAD", "COUNT", "10", "STREAMS", "s", "0"])).await;
        assert_eq!(read.as_array().unwrap().len(), 1, "{read}");
        let me = must(conn.command(&["CLIENT", "ID"])).await;
        let me = me.as_integer().unwrap().to_string();
        must(conn.command(&["CLIENT", "UNBLOCK", &me])).await;
        let stats = must(redis.info_commandstats()).await;
        assert_eq!(stats.get("xadd"), Some(&1), "{stats:?}");
        assert_eq!(stats.get("xread"), Some(&1), "{stats:?}");
        assert_eq!(stats.get("client|unblock"), Some(&1), "{stats:?}");
        assert_eq!(stats.get("get"), None, "reset before: {stats:?}");
    }

    #[tokio::test]
    async fn stop_and_restart_on_the_same_port() {
        let mut redis = must(RedisServer::start()).await;
        let port = redis.port();
        must(redis.command(&["SET", "k", "v"])).await;
        // Keep a client connected across the restart, like a server under test would.
        let mut held = must(redis.connect()).await;

        must(redis.stop()).await;
        assert!(!redis.is_running());
        assert!(redis.pid().is_none());
        assert!(
            redis.command(&["PING"]).await.is_err(),
            "stopped redis answered"
        );
        assert!(held.command(&["PING"]).await.is_err());

        must(redis.restart()).await;
        assert_eq!(redis.port(), port);
        assert!(redis.is_running());
        assert!(
            must(redis.command(&["GET", "k"])).await.is_nil(),
            "no persistence"
        );
        must(redis.restart()).await; // restart while running
        assert_eq!(
            must(redis.command(&["PING"])).await,
            RespValue::Simple("PONG".into())
        );
        assert!(redis.logs().contains("Ready to accept connections"));
    }

    #[tokio::test]
    async fn a_persistent_server_keeps_its_data_across_sigkill_and_sigterm() {
        let mut redis = must(RedisServer::start_persistent()).await;
        let port = redis.port();
        let first = must(redis.command(&["XADD", "s", "*", "n", "1"])).await;
        must(redis.stop()).await; // SIGKILL: appendfsync always has the write on disk
        must(redis.restart()).await;
        assert_eq!(redis.port(), port);
        let second = must(redis.command(&["XADD", "s", "*", "n", "2"])).await;
        must(redis.terminate()).await; // SIGTERM: clean shutdown
        assert!(!redis.is_running());
        must(redis.terminate()).await; // not running: nothing to do
        must(redis.restart()).await;
        let all = must(redis.command(&["XRANGE", "s", "-", "+"])).await;
        let ids: Vec<String> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_array().unwrap()[0].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = [first, second]
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn drop_kills_the_process() {
        let redis = must(RedisServer::start()).await;
        let addr = redis.addr();
        drop(redis);
        assert!(!ping(addr).await);
    }
}
