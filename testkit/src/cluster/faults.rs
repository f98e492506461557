//! Faults and failovers of a test cluster: killing and restarting nodes, killing a primary
//! until a replica takes over, manual failovers, and waiting until every node agrees on the
//! new roles and the cluster is healthy again. Every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use super::node::{launch, node_command, node_healthy, parse_cluster_nodes, ping};
use super::{RedisCluster, FAILOVER_TIMEOUT};
use crate::process::{self, POLL_INTERVAL};
use crate::resp::RespValue;

impl RedisCluster {
    /// Kills the node on `port` (SIGKILL) and waits until it is gone. Its data is lost.
    pub async fn kill(&mut self, port: u16) -> Result<()> {
        let node = self.node_mut(port)?;
        if let Some(mut child) = node.child.take() {
            process::kill_and_wait(&mut child).await?;
        }
        Ok(())
    }

    /// Starts the (killed) node on `port` again, with its cluster config but no data, and waits
    /// (at most 30 s) until the cluster is healthy: a former primary whose slots were taken
    /// over rejoins as a replica of the new primary and syncs from it.
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        let node = self.node_mut(port)?;
        if let Some(mut child) = node.child.take() {
            process::kill_and_wait(&mut child).await?;
        }
        // Still serving slots in the others' view: it comes back as that primary; else (it was
        // a replica, or its replica took over) as a replica.
        let primary = self
            .nodes()
            .await?
            .iter()
            .any(|n| n.port == port && n.primary && !n.slots.is_empty());
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        let child = launch(&dir, port)?;
        self.node_mut(port)?.child = Some(child);
        while !ping(port).await {
            if Instant::now() >= deadline {
                bail!("restarted node {port} did not answer PING in time");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        // A former primary turns into a replica once it learns that its slots moved.
        let expected = if primary { "master" } else { "slave" };
        loop {
            let role = node_command(port, &["ROLE"]).await?;
            let role = role
                .as_array()
                .and_then(|r| r.first())
                .and_then(RespValue::as_str);
            if role == Some(expected) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("restarted node {port} is not a {expected} in time ({role:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Box::pin(self.wait_agreement(port, primary, deadline)).await?;
        Box::pin(self.wait_healthy(deadline.saturating_duration_since(Instant::now()))).await
    }

    /// Kills the primary on `primary_port` and waits (at most 30 s) until one of its replicas
    /// has been promoted and every running node reports `cluster_state:ok`. Returns the port of
    /// the new primary.
    pub async fn kill_primary(&mut self, primary_port: u16) -> Result<u16> {
        let replicas = self.replicas_of(primary_port).await?;
        ensure!(
            !replicas.is_empty(),
            "the primary on port {primary_port} has no replica to fail over to"
        );
        self.kill(primary_port).await?;
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if let Some(&new) = self.promoted(&replicas).await.first() {
                Box::pin(self.wait_agreement(new, true, deadline)).await?;
                Box::pin(self.wait_healthy(deadline.saturating_duration_since(Instant::now())))
                    .await?;
                return Ok(new);
            }
            if Instant::now() >= deadline {
                bail!("no replica of {primary_port} ({replicas:?}) was promoted within {FAILOVER_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Manual failover: `CLUSTER FAILOVER` on the replica on `replica_port`, then waits (at most
    /// 30 s) until it is a primary and every running node reports `cluster_state:ok`.
    pub async fn failover(&mut self, replica_port: u16) -> Result<()> {
        node_command(replica_port, &["CLUSTER", "FAILOVER"])
            .await?
            .into_result()?;
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if !self.promoted(&[replica_port]).await.is_empty() {
                Box::pin(self.wait_agreement(replica_port, true, deadline)).await?;
                return self
                    .wait_healthy(deadline.saturating_duration_since(Instant::now()))
                    .await;
            }
            if Instant::now() >= deadline {
                bail!("replica {replica_port} was not promoted within {FAILOVER_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node's `CLUSTER NODES` shows `port` working, as a primary with
    /// slots or (`primary` false) as a replica, so lookups agree whichever node is asked.
    async fn wait_agreement(&mut self, port: u16, primary: bool, deadline: Instant) -> Result<()> {
        loop {
            let mut agreed = true;
            for asked in self.running_ports() {
                let view = match node_command(asked, &["CLUSTER", "NODES"]).await {
                    Ok(RespValue::Bulk(text)) => {
                        parse_cluster_nodes(&String::from_utf8_lossy(&text))?
                    }
                    _ => Vec::new(),
                };
                agreed &= view.iter().any(|n| {
                    n.port == port
                        && !n.failed
                        && n.primary == primary
                        && (n.slots.is_empty() != primary)
                        && (primary || n.primary_id.is_some())
                });
            }
            if agreed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let role = if primary { "primary" } else { "replica" };
                bail!("the nodes do not all see {port} as a working {role}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Which of `ports` call themselves primary (`ROLE`).
    async fn promoted(&self, ports: &[u16]) -> Vec<u16> {
        let mut promoted = Vec::new();
        for &port in ports {
            if let Ok(RespValue::Array(role)) = node_command(port, &["ROLE"]).await {
                if role.first().and_then(RespValue::as_str) == Some("master") {
                    promoted.push(port);
                }
            }
        }
        promoted
    }

    /// Waits until every running node reports `cluster_state:ok` and every running replica's
    /// link to its primary is up.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for port in self.running_ports() {
                if let Err(why) = node_healthy(port).await {
                    waiting.push(format!("{port}: {why:#}"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cluster did not become healthy within {timeout:?}: {}",
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
