//! The real `redistribute` binary as a child process on a free port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::http::{http_get, HttpResponse};
use crate::process::{self, POLL_INTERVAL};
use crate::{free_port, DEFAULT_TIMEOUT};

/// How long the server may take to answer `GET /healthz` with 200 after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`ServerProcess::restart`] keeps retrying while the old port is still held.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports [`ServerProcess::start`] tries when another process takes one first.
const START_ATTEMPTS: usize = 5;
/// Lines of the server's output quoted in error messages.
const TAIL_LINES: usize = 30;

/// Path of the `redistribute` binary, built once per test process.
///
/// The first call runs `cargo build -p redistribute-cli --bin redistribute` into the target
/// directory and profile the running test binary was built in (found from the test executable's
/// path, `<target-dir>/<profile>/deps/…`; otherwise `$CARGO_TARGET_DIR` or `<workspace>/target`
/// and the profile this crate was compiled with). Building every time, not only when the binary
/// is missing, means a test never runs a stale server; when it is up to date cargo only checks.
/// The environment variable `TESTKIT_SERVER_BIN` names a prebuilt binary and skips the build.
///
/// Blocks while cargo runs; call it before starting timed work.
///
/// # Panics
///
/// When the build fails or the binary is not where cargo should have put it, with cargo's
/// exit status; cargo's own output goes to the test's stderr.
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| build_server().map_err(|e| format!("{e:#}"))) {
        Ok(path) => path.clone(),
        Err(e) => panic!("cannot provide the redistribute binary: {e}"),
    }
}

fn build_server() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TESTKIT_SERVER_BIN") {
        return Ok(bin.into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("testkit has no parent directory")?
        .to_path_buf();
    let (target_dir, profile) = target_dir_and_profile(&root);
    let exe = target_dir
        .join(&profile)
        .join(format!("redistribute{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "redistribute-cli", "--bin", "redistribute"])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build -p redistribute-cli --bin redistribute` failed with {status}");
    }
    if !exe.is_file() {
        bail!("cargo build succeeded but {} does not exist", exe.display());
    }
    Ok(exe)
}

/// The target directory and profile directory name (`debug`, `release`, …) to build into.
fn target_dir_and_profile(workspace_root: &Path) -> (PathBuf, String) {
    if let Ok(exe) = std::env::current_exe() {
        let deps = exe.parent();
        let profile_dir = deps
            .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
            .and_then(Path::parent);
        if let Some(profile_dir) = profile_dir {
            if let (Some(target), Some(name)) = (profile_dir.parent(), profile_dir.file_name()) {
                return (target.to_path_buf(), name.to_string_lossy().into_owned());
            }
        }
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root.join(dir), // joining an absolute path replaces the root
        None => workspace_root.join("target"),
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    (target, profile.to_owned())
}

/// A running `redistribute serve` on 127.0.0.1 and a free port, killed when dropped.
///
/// Its stdout and stderr go to a temporary file; print [`ServerProcess::logs`] when a test
/// fails. Environment variables starting with `REDISTRIBUTE_` are not inherited, so the
/// developer's shell cannot change what a test runs; pass them explicitly instead.
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    addr: SocketAddr,
    pid: u32,
    child: Option<Child>,
    dir: TempDir,
}

impl ServerProcess {
    /// Runs `<bin> serve --listen 127.0.0.1:<free port> <args…>` and waits (at most 20 s) until
    /// `GET /healthz` answers 200. Retries on a new port if the chosen one was taken meanwhile.
    ///
    /// `bin` is usually [`server_binary()`]; `args` are further flags, e.g.
    /// `["--redis".into(), redis.url()]`.
    pub async fn start(bin: &Path, args: &[String]) -> Result<ServerProcess> {
        Self::start_with_env(bin, args, &[]).await
    }

    /// Like [`ServerProcess::start`], with extra environment variables for the child.
    pub async fn start_with_env(
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<ServerProcess> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = Self::spawn_on(bin, args, envs, free_port())?;
            match server.wait_healthy(READY_TIMEOUT).await {
                Ok(()) => return Ok(server),
                Err(e) if server.port_was_taken() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Spawns the server on a free port without waiting for it to become healthy, for tests
    /// of start-up itself (e.g. a bad flag); follow with [`ServerProcess::wait_healthy`] or
    /// [`ServerProcess::wait_exit`].
    pub fn spawn(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<ServerProcess> {
        Self::spawn_on(bin, args, envs, free_port())
    }

    fn spawn_on(
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        port: u16,
    ) -> Result<ServerProcess> {
        let dir = tempfile::Builder::new()
            .prefix("redistribute-server-")
            .tempdir()
            .context("creating a temporary directory for the server's logs")?;
        let mut server = ServerProcess {
            bin: bin.to_path_buf(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            pid: 0,
            child: None,
            dir,
        };
        server.spawn_child()?;
        Ok(server)
    }

    fn spawn_child(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REDISTRIBUTE_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = process::spawn_logged(&mut cmd, &self.log_path())
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `GET /healthz` answers 200. Fails at once, with the output's tail, if the
    /// process exits; fails with the tail after `timeout`.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .context("the server is not running (killed earlier)")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "server {} exited with {status} before becoming healthy; output tail:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            let probe = http_get(self.addr, "/healthz", Duration::from_secs(1)).await;
            let last = match probe {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("/healthz answered {}: {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "server {} not healthy within {timeout:?} (last probe: {last}); output tail:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on (kept across [`ServerProcess::restart`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The WebSocket endpoint, `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The HTTP base URL, `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id of the current (or, after it exited, the last) server process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `GET <path>` against the server, within [`DEFAULT_TIMEOUT`].
    pub async fn http_get(&self, path: &str) -> Result<HttpResponse> {
        http_get(self.addr, path, DEFAULT_TIMEOUT).await
    }

    /// SIGKILL, then wait until the process is gone (a crash, no drain).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            process::kill_and_wait(&mut child).await?;
        }
        Ok(())
    }

    /// Sends SIGTERM (graceful drain) without waiting; follow with
    /// [`ServerProcess::wait_exit`].
    pub fn terminate(&mut self) -> Result<()> {
        if !self.is_running() {
            bail!("server {} is not running", self.addr);
        }
        process::terminate(self.pid)
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .context("the server was killed earlier")?;
        match process::wait_exit(child, timeout).await? {
            Some(status) => Ok(status),
            None => bail!(
                "server {} still running {timeout:?} later; output tail:\n{}",
                self.addr,
                self.log_tail()
            ),
        }
    }

    /// Kills the server if it runs, then starts it again with the same flags on the same port
    /// and waits until it is healthy. Retries for up to 10 s while the port is still held.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            self.spawn_child()?;
            match self.wait_healthy(READY_TIMEOUT).await {
                Ok(()) => return Ok(()),
                Err(_) if self.port_was_taken() && Instant::now() < deadline => {
                    self.kill().await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything the server printed so far (stdout and stderr, across restarts).
    pub fn logs(&self) -> String {
        process::read_log(&self.log_path())
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_path(), TAIL_LINES)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Whether the process exited because its port was taken.
    fn port_was_taken(&mut self) -> bool {
        let exited = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))));
        exited
            && self
                .log_tail()
                .to_ascii_lowercase()
                .contains("address already in use")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            process::kill_on_drop(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the server: answers `/healthz` with 200 on the `--listen` address, prints
    /// its arguments and one environment variable, and exits 0 on SIGTERM.
    const FAKE_SERVER: &str = r#"
import http.server, os, signal, sys
args = sys.argv[1:]
assert args[0] == "serve" and args[1] == "--listen", args
host, port = args[2].rsplit(":", 1)
print("args", args[3:], "env", os.environ.get("FAKE_ENV"), os.environ.get("REDISTRIBUTE_X"), flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer((host, int(port)), H).serve_forever()
"#;

    /// Writes the fake server as an executable script, or `None` if python3 is missing.
    fn fake_server(dir: &TempDir) -> Option<PathBuf> {
        let python = Command::new("python3").arg("--version").output().ok()?;
        if !python.status.success() {
            return None;
        }
        let path = dir.path().join("fake-server");
        std::fs::write(&path, format!("#!/usr/bin/env python3\n{FAKE_SERVER}")).ok()?;
        Command::new("chmod").arg("+x").arg(&path).status().ok()?;
        Some(path)
    }

    async fn must<T>(fut: impl std::future::Future<Output = Result<T>>) -> T {
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .expect("test step timed out")
            .unwrap()
    }

    #[tokio::test]
    async fn starts_probes_restarts_and_stops_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let Some(bin) = fake_server(&dir) else {
            eprintln!("python3 missing: skipping the ServerProcess test");
            return;
        };
        let mut server = must(ServerProcess::start_with_env(
            &bin,
            &["--redis".into(), "redis://x".into()],
            &[("FAKE_ENV", "yes")],
        ))
        .await;
        assert_eq!(
            server.ws_url(),
            format!("ws://127.0.0.1:{}/ws", server.port())
        );
        assert_eq!(must(server.http_get("/healthz")).await.status, 200);
        assert_eq!(must(server.http_get("/nope")).await.status, 404);
        let logs = server.logs();
        assert!(
            logs.contains("['--redis', 'redis://x'] env yes None"),
            "{logs}"
        );

        let (port, pid) = (server.port(), server.pid());
        must(server.restart()).await;
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), pid);

        server.terminate().unwrap();
        let status = must(server.wait_exit(Duration::from_secs(10))).await;
        assert!(status.success(), "{status}");

        must(server.restart()).await;
        must(server.kill()).await;
        assert!(!server.is_running());
        assert!(http_get(server.addr(), "/healthz", Duration::from_secs(1))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn reports_an_early_exit_with_the_output() {
        let err = ServerProcess::start(Path::new("/bin/sh"), &[])
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("exited with"), "{text}");
    }

    #[test]
    fn finds_the_profile_from_the_test_executable() {
        let (target, profile) = target_dir_and_profile(Path::new("/nowhere"));
        let exe = std::env::current_exe().unwrap();
        assert!(exe.starts_with(target.join(&profile)), "{exe:?}");
    }
}
