//! A throw-away Redis Cluster per test: N primaries (and R replicas each) on free ports, made
//! into a cluster with `redis-cli --cluster create`, killed on drop.
//!
//! Nodes run with `cluster-node-timeout` 1000 ms, so a killed primary is replaced by its replica
//! within a few seconds, and `cluster-replica-validity-factor 0`, so a replica is always allowed
//! to take over. Every wait is bounded.
//!
//! This module owns the cluster (forming it, its nodes, queries); `faults` kills, restarts
//! and failovers, `node` launching and talking to one node.

mod faults;
mod node;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::process::{self, POLL_INTERVAL};
use crate::resp::RespValue;
use node::{
    cluster_ports, connect, info_field, launch, log_path, node_command, parse_cluster_nodes, ping,
};

/// How long forming the cluster (launch, create, every node `cluster_state:ok`) may take.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failover (manual or after a kill) may take to complete.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-cluster launch attempts (a port may be taken by another process meanwhile).
const START_ATTEMPTS: usize = 3;
/// Timeout of one command to one node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNodeInfo {
    /// The node id (40 hex characters).
    pub id: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a primary (`master` flag).
    pub primary: bool,
    /// Whether it is flagged `fail` (or `fail?`).
    pub failed: bool,
    /// For a replica, the id of its primary.
    pub primary_id: Option<String>,
    /// Slot ranges it serves (inclusive), for a primary.
    pub slots: Vec<(u16, u16)>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

/// A local Redis Cluster; see the module docs.
///
/// The binaries are `redis-server` and `redis-cli` from `PATH`, or the paths in the environment
/// variables `TESTKIT_REDIS_SERVER` and `TESTKIT_REDIS_CLI`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each, forms the cluster and waits
    /// (at most 30 s) until every node reports `cluster_state:ok` and every replica's link to
    /// its primary is up.
    pub async fn start(primaries: usize, replicas: usize) -> Result<RedisCluster> {
        ensure!(primaries >= 3, "Redis Cluster needs at least 3 primaries");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("redistribute-cluster-")
                .tempdir()
                .context("creating a temporary directory for the cluster")?;
            let ports = cluster_ports(primaries * (1 + replicas))?;
            let mut cluster = RedisCluster {
                nodes: ports
                    .iter()
                    .map(|&port| Node { port, child: None })
                    .collect(),
                dir,
            };
            match cluster.form(replicas).await {
                Ok(()) => return Ok(cluster),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        bail!(
            "the Redis Cluster failed to start {START_ATTEMPTS} times:\n{}",
            failures.join("\n---\n")
        )
    }

    async fn form(&mut self, replicas: usize) -> Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].port;
            let child = launch(self.dir.path(), port)?;
            self.nodes[i].child = Some(child);
        }
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].port;
            loop {
                let child = self.nodes[i].child.as_mut().expect("just launched");
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "redis-server on port {port} exited with {status}:\n{}",
                        process::log_tail(&log_path(self.dir.path(), port), 10)
                    );
                }
                if ping(port).await {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("redis-server on port {port} did not answer PING in time");
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        let cli = std::env::var_os("TESTKIT_REDIS_CLI").unwrap_or_else(|| "redis-cli".into());
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let log = self.dir.path().join("create.log");
        let mut child = process::spawn_logged(&mut cmd, &log)
            .with_context(|| format!("is redis-cli installed? (looked for {cli:?})"))?;
        let left = deadline.saturating_duration_since(Instant::now());
        match process::wait_exit(&mut child, left).await? {
            Some(status) if status.success() => {}
            Some(status) => bail!(
                "redis-cli --cluster create failed with {status}:\n{}",
                process::log_tail(&log, 20)
            ),
            None => {
                process::kill_and_wait(&mut child).await?;
                bail!("redis-cli --cluster create did not finish in time");
            }
        }
        Box::pin(self.wait_healthy(deadline.saturating_duration_since(Instant::now()))).await
    }

    /// Client ports of all nodes, in launch order (running or not).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://127.0.0.1:PORT` of every node, in launch order; hand any of them (or all) to
    /// the server's `--redis-cluster` flag.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The process id of the node on `port`, if it runs.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.node(port).ok()?.child.as_ref().map(Child::id)
    }

    /// Ports of the nodes whose process is running.
    pub fn running_ports(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|n| {
                let running = matches!(n.child.as_mut().map(Child::try_wait), Some(Ok(None)));
                running.then_some(n.port)
            })
            .collect()
    }

    /// Runs one command on the node at `port` (fresh connection, 2 s timeout).
    pub async fn command(&self, port: u16, args: &[&str]) -> Result<RespValue> {
        node_command(port, args).await
    }

    /// The cluster as a running node sees it (`CLUSTER NODES`), asking the nodes in turn.
    pub async fn nodes(&mut self) -> Result<Vec<ClusterNodeInfo>> {
        let mut last_err = None;
        for port in self.running_ports() {
            match node_command(port, &["CLUSTER", "NODES"]).await {
                Ok(RespValue::Bulk(text)) => {
                    return parse_cluster_nodes(&String::from_utf8_lossy(&text))
                }
                Ok(other) => last_err = Some(anyhow::anyhow!("CLUSTER NODES replied {other}")),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no node is running")))
    }

    /// Ports of the current primaries that are not flagged failed, lowest first.
    pub async fn primaries(&mut self) -> Result<Vec<u16>> {
        let mut ports: Vec<u16> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        Ok(ports)
    }

    /// Ports of the replicas of the primary on `primary_port`.
    pub async fn replicas_of(&mut self, primary_port: u16) -> Result<Vec<u16>> {
        let nodes = self.nodes().await?;
        let primary = nodes
            .iter()
            .find(|n| n.port == primary_port)
            .with_context(|| format!("no node on port {primary_port}"))?;
        Ok(nodes
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(primary.id.as_str()) && !n.failed)
            .map(|n| n.port)
            .collect())
    }

    /// The port of the primary serving `key` (by `CLUSTER KEYSLOT` and the slot table).
    pub async fn primary_for_key(&mut self, key: &str) -> Result<u16> {
        let port = *self.running_ports().first().context("no node is running")?;
        let slot = node_command(port, &["CLUSTER", "KEYSLOT", key])
            .await?
            .into_result()?
            .as_integer()
            .context("CLUSTER KEYSLOT did not return an integer")? as u16;
        self.nodes()
            .await?
            .into_iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
            })
            .map(|n| n.port)
            .with_context(|| format!("no primary serves slot {slot}"))
    }

    /// `INFO clients` `connected_clients` of the node on `port`.
    pub async fn connected_clients(&self, port: u16) -> Result<u64> {
        let info = node_command(port, &["INFO", "clients"])
            .await?
            .into_result()?;
        let text = info.as_str().context("INFO clients is not text")?;
        info_field(text, "connected_clients")
            .with_context(|| format!("no connected_clients in {text:?}"))?
            .parse()
            .context("connected_clients is not a number")
    }

    /// Every key of the node on `port` matching `pattern` (`SCAN`, all pages).
    pub async fn keys(&self, port: u16, pattern: &str) -> Result<Vec<String>> {
        let mut conn = connect(port).await?;
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            let reply = conn
                .command_timeout(
                    &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"],
                    COMMAND_TIMEOUT,
                )
                .await?
                .into_result()?;
            let parts = reply.as_array().context("SCAN reply is not an array")?;
            ensure!(parts.len() == 2, "SCAN replied {reply}");
            cursor = parts[0].as_str().context("SCAN cursor")?.to_owned();
            for key in parts[1].as_array().context("SCAN keys")? {
                keys.push(key.as_str().context("SCAN key")?.to_owned());
            }
            if cursor == "0" {
                return Ok(keys);
            }
        }
    }

    /// How many keys matching `pattern` each current primary holds: port → count.
    pub async fn keys_per_primary(&mut self, pattern: &str) -> Result<HashMap<u16, usize>> {
        let mut counts = HashMap::new();
        for port in self.primaries().await? {
            counts.insert(port, self.keys(port, pattern).await?.len());
        }
        Ok(counts)
    }

    /// Everything the node on `port` logged.
    pub fn logs(&self, port: u16) -> String {
        process::read_log(&log_path(self.dir.path(), port))
    }

    fn node(&self, port: u16) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .with_context(|| format!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no cluster node on port {port}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                process::kill_on_drop(child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn must<T>(fut: impl std::future::Future<Output = Result<T>>) -> T {
        // Boxed: the steps' futures are large in debug builds (the test thread has 2 MiB).
        tokio::time::timeout(Duration::from_secs(60), Box::pin(fut))
            .await
            .expect("test step timed out")
            .unwrap()
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [93->-292f8b365bb7edb5e285caf0b7e6ddc7265a2f4]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 connected
";
        let nodes = parse_cluster_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].primary);
        assert_eq!(
            nodes[0].primary_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert!(nodes[2].primary && !nodes[2].failed);
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert!(nodes[3].failed);
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus() {
        let ports = cluster_ports(6).unwrap();
        assert_eq!(ports.len(), 6);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 6);
        assert!(ports.iter().all(|&p| p <= 55_000));
    }

    #[tokio::test]
    async fn forms_a_cluster_and_fails_over() {
        let mut cluster = must(RedisCluster::start(3, 1)).await;
        assert_eq!(cluster.urls().len(), 6);
        let primaries = must(cluster.primaries()).await;
        assert_eq!(primaries.len(), 3, "{:?}", must(cluster.nodes()).await);
        // A key lands on the primary that serves its slot.
        let owner = must(cluster.primary_for_key("{7}:k")).await;
        must(cluster.command(owner, &["SET", "{7}:k", "v"])).await;
        let moved = must(cluster.command(
            primaries.iter().copied().find(|&p| p != owner).unwrap(),
            &["GET", "{7}:k"],
        ))
        .await;
        assert!(
            moved.as_str().unwrap_or_default().starts_with("MOVED"),
            "{moved}"
        );
        assert_eq!(
            must(cluster.keys(owner, "*")).await,
            vec!["{7}:k".to_string()]
        );
        assert!(must(cluster.connected_clients(owner)).await >= 1);

        // Manual failover: the replica takes over with the data.
        let replica = must(cluster.replicas_of(owner)).await[0];
        must(cluster.failover(replica)).await;
        assert_eq!(must(cluster.primary_for_key("{7}:k")).await, replica);
        let got = must(cluster.command(replica, &["GET", "{7}:k"])).await;
        assert_eq!(got.as_str(), Some("v"));

        // Killing a primary promotes its replica (the old primary, now a replica).
        must(cluster.wait_healthy(Duration::from_secs(30))).await;
        let new = must(cluster.kill_primary(replica)).await;
        assert_eq!(new, owner);
        assert_eq!(must(cluster.primary_for_key("{7}:k")).await, owner);
        assert_eq!(must(cluster.primaries()).await.len(), 3);
        assert_eq!(cluster.running_ports().len(), 5);

        // The killed node comes back as a replica of the new primary, with the data.
        must(cluster.restart(replica)).await;
        assert_eq!(cluster.running_ports().len(), 6);
        assert_eq!(must(cluster.replicas_of(owner)).await, vec![replica]);
        let role = must(cluster.command(replica, &["ROLE"])).await;
        assert_eq!(
            role.as_array().unwrap()[0].as_str(),
            Some("slave"),
            "{role}"
        );
    }
}
