//! Secrets are never printed: the real binary is started with a secret in every place one can
//! be configured (flags, `REDISTRIBUTE_*` variables, the config file; Redis URL passwords for a
//! single Redis and a Redis Cluster, API keys, the JWT secret, the JWT key file, the task
//! secret), logs at `trace`, and is driven into its error paths (bad tokens, bad API keys, bad
//! task ids, Redis down, a wrong Redis password, unreachable Redis at start). None of the
//! secret strings may appear in stdout, stderr, `check-config`, `/status`, `/status.json`,
//! `/metrics`, `/readyz` or any HTTP or WebSocket error.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::STEP;
use redistribute_server::sign_task_id;
use redistribute_testkit::{
    http_request, server_binary, RedisCluster, RedisServer, ServerProcess, WsClient,
};
use serde_json::json;

/// Everything printed or answered, gathered for the final check.
#[derive(Default)]
struct Seen {
    text: String,
}

impl Seen {
    fn add(&mut self, what: &str, text: impl AsRef<str>) {
        self.text
            .push_str(&format!("\n=== {what}\n{}", text.as_ref()));
    }

    /// No secret occurs anywhere, nor its URL-encoded form.
    fn check(&self, secrets: &[&str]) -> Result<()> {
        for secret in secrets {
            let encoded: String = url_encode(secret);
            for form in [secret.to_string(), encoded] {
                if let Some(at) = self.text.find(&form) {
                    let from = self.text[..at].rfind("\n===").unwrap_or(0);
                    let section: String = self.text[from..].chars().take(80).collect();
                    let near = self
                        .text
                        .get(at.saturating_sub(200)..)
                        .unwrap_or(&self.text[at..]);
                    let near: String = near.chars().take(400).collect();
                    anyhow::bail!("secret {secret:?} was printed in {section}…\n{near}");
                }
            }
        }
        Ok(())
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the binary with `args` and `envs` (no inherited `REDISTRIBUTE_*`); returns (success,
/// stdout + stderr).
async fn run(args: &[&str], envs: &[(&str, &str)]) -> Result<(bool, String)> {
    let mut command = tokio::process::Command::new(server_binary());
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REDISTRIBUTE_") {
            command.env_remove(key);
        }
    }
    command.envs(envs.iter().copied());
    let output = tokio::time::timeout(STEP, command.output())
        .await
        .with_context(|| format!("{args:?} did not finish"))??;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

async fn request(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let r = http_request(server.addr(), method, path, headers, body.as_bytes(), STEP).await?;
    Ok((r.status, r.text()))
}

/// Drives a running server through its error paths and gathers every answer. `api_key` and
/// `task_secret` are the server's own (to check they are in effect), `token` one it accepts.
async fn drive(
    server: &ServerProcess,
    seen: &mut Seen,
    api_key: &str,
    task_secret: &str,
    token: &str,
) -> Result<()> {
    // API keys: wrong, missing, right.
    for (what, headers) in [
        ("wrong key", vec![("X-API-Key", "not-the-key-0123456789")]),
        ("no key", vec![]),
        (
            "wrong bearer",
            vec![("Authorization", "Bearer also-not-the-key-1234")],
        ),
    ] {
        let (status, body) = request(
            server,
            "POST",
            "/api/publish",
            &headers,
            r#"{"channel":"c","fields":{"a":1}}"#,
        )
        .await?;
        ensure!(status == 401, "{what}: {status} {body}");
        seen.add(&format!("/api/publish, {what}"), body);
        let (status, body) = request(server, "GET", "/api/history?channel=c", &headers, "").await?;
        ensure!(status == 401, "{what}: {status} {body}");
        seen.add(&format!("/api/history, {what}"), body);
    }
    let auth = format!("Bearer {api_key}");
    let (status, body) = request(
        server,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"task:job1","fields":{"state":"running"}}"#,
    )
    .await?;
    ensure!(status == 200, "the right API key: {status} {body}");
    seen.add("/api/publish", body);
    let (_, body) = request(
        server,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"bad channel","fields":{}}"#,
    )
    .await?;
    seen.add("/api/publish, bad request", body);

    // Task ids: unsigned, badly signed, signed with another secret, signed right.
    let forged = sign_task_id("job1", "another-task-secret-0000");
    for id in ["job1", "job1.zz", "job1.00", forged.as_str()] {
        let (status, body) = request(server, "GET", &format!("/task/{id}"), &[], "").await?;
        // 401 with client authentication on (a token or a signed id is required).
        ensure!(status == 401, "task id {id}: {status} {body}");
        seen.add(&format!("/task/{id}"), body);
    }
    let signed = sign_task_id("job1", task_secret);
    let (status, body) = request(server, "GET", &format!("/task/{signed}"), &[], "").await?;
    ensure!(status == 200, "signed task id: {status} {body}");
    seen.add("/task signed", body);

    // Tokens: garbage, forged, none; on WebSocket, SSE and long-poll.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "x", "exp": 4_000_000_000u64, "subscribe": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"a-forged-secret-of-at-least-32-bytes!"),
    )?;
    for bad in ["garbage", "a.b.c", forged.as_str()] {
        let mut ws = WsClient::connect(&server.ws_url()).await?;
        let reply = ws.request(json!({"type": "connect", "token": bad})).await?;
        ensure!(reply["type"] == "error", "{reply}");
        seen.add("ws connect, bad token", reply.to_string());
        for path in [
            format!("/sse?channel=c&token={bad}"),
            format!("/poll?channel=c&timeout=1&token={bad}"),
        ] {
            let (status, body) = request(server, "GET", &path, &[], "").await?;
            ensure!(status == 401, "{path}: {status} {body}");
            seen.add(&path, body);
        }
    }
    let mut ws = WsClient::connect(&server.ws_url()).await?;
    let reply = ws
        .request(json!({"type": "connect", "token": token}))
        .await?;
    ensure!(reply["type"] == "connected", "the right token: {reply}");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "news"}))
        .await?;
    seen.add("ws subscribe", reply.to_string());
    let reply = ws
        .request(json!({"type": "publish", "channel": "other", "fields": {"a": 1}}))
        .await?;
    ensure!(reply["type"] == "error", "{reply}");
    seen.add("ws publish, forbidden", reply.to_string());

    // The operator pages.
    for path in ["/status", "/status.json", "/metrics", "/readyz", "/healthz"] {
        let (_, body) = request(server, "GET", path, &[], "").await?;
        seen.add(path, body);
    }
    Ok(())
}

/// A token for `secret` (HS256) that may subscribe to `news` and publish nowhere.
fn jwt(secret: &str) -> Result<String> {
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "exp": 4_000_000_000u64, "subscribe": ["news"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// The middle line of a PEM file's body: a string that must not be printed.
fn pem_line(path: &Path) -> Result<String> {
    let pem = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(lines.get(lines.len() / 2).context("empty PEM")?.to_string())
}

/// A single Redis with a password: the URL password on the command line, the API key in the
/// config file, the task secret in the environment, the JWT secret on the command line
/// (overriding another one in the file, which must not be printed either). Then Redis goes
/// down while the server runs, and servers start against a wrong password and a dead port.
#[tokio::test]
async fn secrets_of_a_single_redis_server_are_never_printed() -> Result<()> {
    const REDIS_PW: &str = "redis-pw-Single-7f3a9c";
    const API_KEY: &str = "api-key-in-file-5d1e8b";
    const TASK_SECRET: &str = "task-secret-in-env-2c4f6a";
    const JWT_SECRET: &str = "jwt-secret-on-flag-9b8a7c6d5e4f3a2b1c";
    const JWT_SECRET_FILE: &str = "jwt-secret-in-file-overridden-0a1b2c3d";
    const WRONG_PW: &str = "wrong-redis-pw-6e5d4c";
    let secrets = [
        REDIS_PW,
        API_KEY,
        TASK_SECRET,
        JWT_SECRET,
        JWT_SECRET_FILE,
        WRONG_PW,
    ];
    let mut redis = RedisServer::start().await?;
    redis
        .command(&["CONFIG", "SET", "requirepass", REDIS_PW])
        .await?;
    let url = format!("redis://:{REDIS_PW}@127.0.0.1:{}", redis.port());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        format!("api_key = [\"{API_KEY}\"]\njwt_secret = \"{JWT_SECRET_FILE}\"\n"),
    )?;
    let file = file.display().to_string();
    let envs = [
        ("REDISTRIBUTE_TASK_SECRET", TASK_SECRET),
        ("RUST_LOG", "trace"),
    ];
    let args: Vec<String> = [
        "--redis",
        &url,
        "--jwt-secret",
        JWT_SECRET,
        "--config",
        &file,
    ]
    .map(String::from)
    .to_vec();
    let mut seen = Seen::default();
    let mut server = ServerProcess::start_with_env(&server_binary(), &args, &envs).await?;
    drive(&server, &mut seen, API_KEY, TASK_SECRET, &jwt(JWT_SECRET)?).await?;

    // Redis goes away: requests fail, the client reconnects in the background (and logs it).
    redis.stop().await?;
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = request(
        &server,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"c","fields":{"a":1}}"#,
    )
    .await?;
    ensure!(status == 503, "publish with Redis down: {status} {body}");
    seen.add("/api/publish, Redis down", body);
    for path in ["/readyz", "/status.json", "/metrics"] {
        let (_, body) = request(&server, "GET", path, &[], "").await?;
        seen.add(&format!("{path}, Redis down"), body);
    }
    // Long enough for reconnect attempts to be logged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().await?;
    redis
        .command(&["CONFIG", "SET", "requirepass", REDIS_PW])
        .await?;
    let logs = server.logs();
    server.kill().await?;
    ensure!(
        logs.contains("TRACE"),
        "the server did not log at trace level: {logs}"
    );
    ensure!(logs.contains("engine: redis at"), "no startup line: {logs}");
    seen.add("server logs", logs);

    // check-config with the same file and environment (the flag's secret via the environment).
    let env_with_flag = [
        ("REDISTRIBUTE_TASK_SECRET", TASK_SECRET),
        ("REDISTRIBUTE_JWT_SECRET", JWT_SECRET),
        ("REDISTRIBUTE_REDIS", url.as_str()),
        ("RUST_LOG", "trace"),
    ];
    let (ok, out) = run(&["check-config", &file], &env_with_flag).await?;
    ensure!(ok, "{out}");
    ensure!(
        out.contains("# jwt_secret = \"<redacted>\"") && out.contains("redis://:***@"),
        "{out}"
    );
    seen.add("check-config", out);

    // A wrong password, and nothing listening: the start fails and says why, without them.
    let wrong = format!("redis://:{WRONG_PW}@127.0.0.1:{}", redis.port());
    let dead = format!("redis://user:{REDIS_PW}@127.0.0.1:1");
    for bad in [wrong, dead] {
        let (ok, out) = run(
            &["serve", "--listen", "127.0.0.1:0", "--redis", &bad],
            &[("RUST_LOG", "trace")],
        )
        .await?;
        ensure!(!ok, "started with {bad}: {out}");
        seen.add(&format!("serve --redis {}", bad.len()), out);
    }
    seen.check(&secrets)
}

/// A Redis Cluster whose nodes need a password (seed URLs in the environment), the API key in
/// the environment, the task secret on the command line, the JWT public key file in the config
/// file; then a cluster start against a dead node.
#[tokio::test]
async fn secrets_of_a_cluster_server_are_never_printed() -> Result<()> {
    const CLUSTER_PW: &str = "cluster-pw-Seed-3b2a1f";
    const API_KEY: &str = "api-key-in-env-8c7b6a5f";
    const TASK_SECRET: &str = "task-secret-on-flag-1d2e3f";
    let cluster = RedisCluster::start(3, 0).await?;
    for port in cluster.ports() {
        cluster
            .command(port, &["CONFIG", "SET", "requirepass", CLUSTER_PW])
            .await?
            .into_result()?;
    }
    let urls: Vec<String> = cluster
        .ports()
        .iter()
        .map(|port| format!("redis://default:{CLUSTER_PW}@127.0.0.1:{port}"))
        .collect();
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    std::fs::write(&private, key.serialize_pem())?;
    std::fs::write(&public, key.public_key_pem())?;
    let private_line = pem_line(&private)?;
    let public_line = pem_line(&public)?;
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        format!("jwt_public_key = \"{}\"\n", public.display()),
    )?;
    let file = file.display().to_string();
    let seeds = urls.join(",");
    let envs = [
        ("REDISTRIBUTE_REDIS_CLUSTER", seeds.as_str()),
        ("REDISTRIBUTE_API_KEY", API_KEY),
        ("RUST_LOG", "trace"),
    ];
    let args: Vec<String> = ["--task-secret", TASK_SECRET, "--config", &file]
        .map(String::from)
        .to_vec();
    let token = {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &json!({"sub": "u", "exp": 4_000_000_000u64, "subscribe": ["news"]}),
            &key,
        )?
    };
    let mut seen = Seen::default();
    let mut server = ServerProcess::start_with_env(&server_binary(), &args, &envs).await?;
    drive(&server, &mut seen, API_KEY, TASK_SECRET, &token).await?;
    let logs = server.logs();
    server.kill().await?;
    ensure!(logs.contains("TRACE"), "not at trace level: {logs}");
    ensure!(
        logs.contains("engine: redis cluster via"),
        "no startup line: {logs}"
    );
    seen.add("server logs", logs);

    let mut check_env = envs.to_vec();
    check_env.push(("REDISTRIBUTE_TASK_SECRET", TASK_SECRET));
    let (ok, out) = run(&["check-config", &file], &check_env).await?;
    ensure!(ok && out.contains("redis://default:***@"), "{out}");
    seen.add("check-config", out);

    let dead = format!("redis://default:{CLUSTER_PW}@127.0.0.1:1");
    let (ok, out) = run(
        &["serve", "--listen", "127.0.0.1:0", "--redis-cluster", &dead],
        &[("RUST_LOG", "trace")],
    )
    .await?;
    ensure!(!ok, "started on a dead cluster: {out}");
    seen.add("serve on a dead cluster", out);
    seen.check(&[
        CLUSTER_PW,
        API_KEY,
        TASK_SECRET,
        &private_line,
        &public_line,
    ])
}
