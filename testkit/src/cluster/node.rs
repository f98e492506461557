//! One node of a test cluster: free port pairs (client and bus), launching `redis-server` in
//! cluster mode, commands with a timeout, health and `CLUSTER NODES` parsing.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, ensure, Context, Result};

use super::{ClusterNodeInfo, COMMAND_TIMEOUT};
use crate::process;
use crate::resp::{RespConnection, RespValue};

/// `n` ports such that each port and its cluster bus port (port + 10000) were free a moment ago.
pub(super) fn cluster_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n * 200 {
        if ports.len() == n {
            return Ok(ports);
        }
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = listener.local_addr()?.port();
        if port > 55_000 {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + 10_000)) else {
            continue;
        };
        held.push((listener, bus));
        ports.push(port);
    }
    if ports.len() == n {
        return Ok(ports);
    }
    bail!("could not find {n} free port pairs (port and port + 10000)")
}

pub(super) fn log_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("redis-{port}.log"))
}

/// Spawns one cluster-enabled `redis-server` on `port`, working in `dir/<port>`.
pub(super) fn launch(dir: &Path, port: u16) -> Result<Child> {
    let bin = std::env::var_os("TESTKIT_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let work = dir.join(port.to_string());
    std::fs::create_dir_all(&work)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", "1000"])
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--repl-diskless-sync", "yes"])
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(&work);
    process::spawn_logged(&mut cmd, &log_path(dir, port)).with_context(|| {
        format!(
            "is redis-server installed? (looked for {bin:?}; set TESTKIT_REDIS_SERVER to override)"
        )
    })
}

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

pub(super) async fn connect(port: u16) -> Result<RespConnection> {
    RespConnection::connect_timeout(addr(port), COMMAND_TIMEOUT).await
}

pub(super) async fn node_command(port: u16, args: &[&str]) -> Result<RespValue> {
    connect(port)
        .await?
        .command_timeout(args, COMMAND_TIMEOUT)
        .await
        .with_context(|| format!("{args:?} on node {port}"))
}

pub(super) async fn ping(port: u16) -> bool {
    matches!(
        node_command(port, &["PING"]).await,
        Ok(RespValue::Simple(s)) if s == "PONG"
    )
}

/// Ok when the node reports `cluster_state:ok` and, if it is a replica, its link is up.
pub(super) async fn node_healthy(port: u16) -> Result<()> {
    let info = node_command(port, &["CLUSTER", "INFO"])
        .await?
        .into_result()?;
    let state = info_field(info.as_str().unwrap_or_default(), "cluster_state");
    ensure!(state.as_deref() == Some("ok"), "cluster_state {state:?}");
    let repl = node_command(port, &["INFO", "replication"])
        .await?
        .into_result()?;
    let text = repl.as_str().unwrap_or_default();
    if info_field(text, "role").as_deref() == Some("slave") {
        let link = info_field(text, "master_link_status");
        ensure!(link.as_deref() == Some("up"), "replica link {link:?}");
    }
    Ok(())
}

/// The value of `name:value` in an `INFO`-style text.
pub(super) fn info_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once(':')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Parses `CLUSTER NODES` output.
pub(super) fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNodeInfo>> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        ensure!(parts.len() >= 8, "malformed CLUSTER NODES line {line:?}");
        let hostport = parts[1].split('@').next().unwrap_or_default();
        let port = hostport
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        let flags: Vec<&str> = parts[2].split(',').collect();
        let mut slots = Vec::new();
        for range in &parts[8..] {
            if range.starts_with('[') {
                continue; // a slot being migrated
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            slots.push((a.parse()?, b.parse()?));
        }
        nodes.push(ClusterNodeInfo {
            id: parts[0].to_owned(),
            port,
            primary: flags.contains(&"master"),
            failed: flags.contains(&"fail") || flags.contains(&"fail?"),
            primary_id: (parts[3] != "-").then(|| parts[3].to_owned()),
            slots,
        });
    }
    Ok(nodes)
}
