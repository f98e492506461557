//! Child-process plumbing shared by [`crate::RedisServer`] and [`crate::ServerProcess`]: output
//! captured to a file, bounded waits for exit, and kill-on-drop.
//!
//! Children are plain `std::process::Child`ren polled with `try_wait`, so killing one in `Drop`
//! can reap it synchronously and no runtime's child reaper is involved.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a waiting loop looks at a child or a port again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    cmd.spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub(crate) async fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends SIGKILL and waits (bounded) until the child is reaped, so its ports are free.
pub(crate) async fn kill_and_wait(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // Fails only if the child already exited, which the wait below reports.
    let _ = child.kill();
    match wait_exit(child, Duration::from_secs(10)).await? {
        Some(status) => Ok(status),
        None => bail!("process {} did not exit within 10 s of SIGKILL", child.id()),
    }
}

/// Sends SIGTERM through the `kill` command (no libc needed).
pub(crate) fn terminate(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running `kill -TERM`")?;
    if !status.success() {
        bail!("`kill -TERM {pid}` failed with {status}");
    }
    Ok(())
}

/// Kill-on-drop: SIGKILL and reap, synchronously (the process dies at once, so this is quick).
pub(crate) fn kill_on_drop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The whole log file, lossily decoded (empty if it cannot be read).
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of the log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let log = read_log(path);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
