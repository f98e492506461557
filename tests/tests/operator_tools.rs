//! Operator tools of the real binary: `redistribute config` (a sample file with every serve
//! flag at its default), `redistribute token` (a JWT the server accepts, HS256 and ES256) and
//! `redistribute completions` (a script for every shell).

mod common;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use common::{client, setup, Backend, STEP};
use redistribute_testkit::server_binary;
use serde_json::json;

/// Runs the binary with `args` (and `envs`); returns (success, stdout, stderr).
async fn run(args: &[&str], envs: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let mut command = tokio::process::Command::new(server_binary());
    command.args(args).env_remove("REDISTRIBUTE_JWT_SECRET");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = tokio::time::timeout(STEP, command.output())
        .await
        .with_context(|| format!("{args:?} did not finish"))??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The long flags `redistribute serve --help` lists, without `--help`.
async fn serve_flags() -> Result<BTreeSet<String>> {
    let (ok, help, stderr) = run(&["serve", "--help"], &[]).await?;
    ensure!(ok, "serve --help failed: {stderr}");
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            // `-h, --help` or `--listen <LISTEN>`.
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let name: String = line
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(name)
        })
        .filter(|name| !name.is_empty() && name != "help")
        .collect();
    ensure!(flags.len() > 30, "too few flags parsed from {help}");
    Ok(flags)
}

/// A commented `key = value` line of the sample, uncommented (comments are `# text`).
fn entry(line: &str) -> Option<&str> {
    line.strip_prefix('#')
        .filter(|e| e.starts_with(|c: char| c.is_ascii_lowercase()) && e.contains(" = "))
}

/// Every serve flag but `--config` is a key of the sample file; with every default uncommented
/// the file gives exactly the configuration of an empty file, so the defaults the help and the
/// sample state are the server's real ones.
#[tokio::test]
async fn sample_config_has_every_key_at_its_default() -> Result<()> {
    let flags = serve_flags().await?;
    let (ok, sample, stderr) = run(&["config"], &[]).await?;
    ensure!(ok, "config failed: {stderr}");
    let keys: BTreeSet<String> = sample
        .lines()
        .filter_map(|l| entry(l)?.split_once(" = ").map(|(k, _)| k))
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = flags
        .iter()
        .filter(|f| *f != "config")
        .map(|f| f.replace('-', "_"))
        .collect();
    ensure!(
        keys == expected,
        "sample keys {keys:?} differ from the serve flags {expected:?}"
    );
    for flag in &flags {
        if flag != "config" {
            ensure!(sample.contains(&format!("Flag --{flag},")), "--{flag}");
        }
    }

    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "")?;
    // Uncomment every key that has a default (the others are placeholders to fill in).
    let uncommented: String = sample
        .lines()
        .filter_map(|l| entry(l).filter(|e| !e.contains("\"<")))
        .map(|l| format!("{l}\n"))
        .collect();
    let full = dir.path().join("defaults.toml");
    std::fs::write(&full, &uncommented)?;
    let (ok_empty, from_empty, err) =
        run(&["check-config", &empty.display().to_string()], &[]).await?;
    ensure!(ok_empty, "{err}");
    let (ok_full, from_full, err) =
        run(&["check-config", &full.display().to_string()], &[]).await?;
    ensure!(ok_full, "uncommented sample refused: {err}\n{uncommented}");
    ensure!(
        from_empty == from_full,
        "the sample's defaults differ from the server's:\n{from_empty}\n---\n{from_full}"
    );
    Ok(())
}

/// A token minted with the server's secret is accepted and its claims are enforced, `{sub}`
/// included; one minted with another secret is refused.
#[tokio::test]
async fn hs256_token_is_accepted_and_enforced() -> Result<()> {
    const SECRET: &str = "operator-tools-test-secret-0123456789";
    let setup = setup(
        Backend::Embedded,
        &[
            "--jwt-secret",
            SECRET,
            "--api-key",
            "operator-tools-api-key",
        ],
    )
    .await?;
    let server = &setup.server;
    let mint = |secret: &'static str| async move {
        let args = [
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "user:{sub}",
            "--subscribe",
            "news",
            "--publish",
            "chat",
        ];
        // The secret comes from the environment, as an operator sharing the server's would.
        let (ok, out, err) = run(&args, &[("REDISTRIBUTE_JWT_SECRET", secret)]).await?;
        ensure!(ok, "token failed: {err}");
        anyhow::Ok(out.trim().to_owned())
    };
    let token = mint(SECRET).await?;
    let mut c = client(server).await?;
    let reply = c
        .request(json!({"type": "connect", "token": token}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    for (channel, allowed) in [("user:alice", true), ("news", true), ("user:bob", false)] {
        let reply = c
            .request(json!({"type": "subscribe", "channel": channel}))
            .await?;
        let want = if allowed { "subscribed" } else { "error" };
        ensure!(reply["type"] == want, "subscribe {channel}: {reply}");
        if !allowed {
            ensure!(reply["code"] == "forbidden", "{reply}");
        }
    }
    let reply = c
        .request(json!({"type": "publish", "channel": "chat", "fields": {"a": 1}}))
        .await?;
    ensure!(reply["type"] == "published", "{reply}");
    let reply = c
        .request(json!({"type": "publish", "channel": "news", "fields": {"a": 1}}))
        .await?;
    ensure!(reply["code"] == "forbidden", "{reply}");

    let wrong = mint("another-secret-of-the-same-length-000000").await?;
    let mut other = client(server).await?;
    let reply = other
        .request(json!({"type": "connect", "token": wrong}))
        .await?;
    ensure!(reply["code"] == "unauthorized", "{reply}");
    Ok(())
}

/// An ES256 token minted from a private key verifies against the server's public key.
#[tokio::test]
async fn es256_token_from_a_private_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    std::fs::write(&private, key.serialize_pem())?;
    std::fs::write(&public, key.public_key_pem())?;
    let public = public.display().to_string();
    let setup = setup(
        Backend::Embedded,
        &["--jwt-public-key", &public, "--allow-open-api"],
    )
    .await?;
    let private = private.display().to_string();
    let args = ["token", "--private-key", &private, "--subscribe", "*"];
    let (ok, token, err) = run(&args, &[]).await?;
    ensure!(ok, "token failed: {err}");
    let mut c = client(&setup.server).await?;
    let reply = c
        .request(json!({"type": "connect", "token": token.trim()}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let reply = c.subscribe("anything", None).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");

    // A file that holds no private key is named in the error.
    let (ok, _, err) = run(&["token", "--private-key", &public], &[]).await?;
    ensure!(!ok && err.contains("public.pem"), "{err}");
    Ok(())
}

/// `token` refuses what cannot make a usable token: no key, both keys, a secret shorter than
/// the server accepts, a lifetime of 0 or past the clock's range, a missing key file.
#[tokio::test]
async fn token_refuses_bad_arguments() -> Result<()> {
    let s32 = "s".repeat(32);
    let s31 = "s".repeat(31);
    let cases: [&[&str]; 8] = [
        &["token"],
        &["token", "--secret", &s32, "--private-key", "k.pem"],
        &["token", "--secret", ""],
        &["token", "--secret", &s31],
        &["token", "--secret", &s32, "--ttl", "0"],
        &["token", "--secret", &s32, "--ttl", "-1"],
        &["token", "--secret", &s32, "--ttl", "18446744073709551615"],
        &["token", "--private-key", "/nonexistent/key.pem"],
    ];
    for args in cases {
        let (ok, out, err) = run(args, &[]).await?;
        ensure!(
            !ok && out.is_empty() && !err.is_empty(),
            "{args:?}: {out} {err}"
        );
    }
    // At the shortest secret and lifetime it works.
    let (ok, out, err) = run(&["token", "--secret", &s32, "--ttl", "1"], &[]).await?;
    ensure!(ok && out.trim().split('.').count() == 3, "{out} {err}");
    Ok(())
}

/// A completion script for every supported shell names the subcommands; an unknown shell is
/// refused.
#[tokio::test]
async fn completions_for_every_shell() -> Result<()> {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, script, err) = run(&["completions", shell], &[]).await?;
        ensure!(ok, "{shell}: {err}");
        for word in ["check-config", "token", "completions", "redis-cluster"] {
            ensure!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let (ok, _, err) = run(&["completions", "tcsh"], &[]).await?;
    ensure!(!ok && err.contains("tcsh"), "{err}");
    Ok(())
}

/// `rediss://` is refused for both Redis keys, from a flag and from a file: this build has no
/// TLS towards Redis, and the Redis client connected in plaintext to such a URL before.
#[tokio::test]
async fn rediss_urls_are_refused_not_downgraded() -> Result<()> {
    let url = "rediss://127.0.0.1:6380";
    for (flag, key) in [("--redis", "redis"), ("--redis-cluster", "redis_cluster")] {
        let (ok, _, err) = run(&["serve", "--listen", "127.0.0.1:0", flag, url], &[]).await?;
        ensure!(!ok, "{flag} {url} was accepted");
        ensure!(
            err.contains(key) && err.contains("rediss://"),
            "{flag}: {err}"
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("tls.toml");
        std::fs::write(&file, format!("{key} = [\"{url}\"]\n"))?;
        let (ok, out, err) = run(&["check-config", &file.display().to_string()], &[]).await?;
        ensure!(!ok && err.contains(key), "{key} in a file: {out} {err}");
    }
    // Plain redis:// URLs and other schemes keep their behaviour.
    let (ok, _, err) = run(
        &["serve", "--listen", "127.0.0.1:0", "--redis", "http://x"],
        &[],
    )
    .await?;
    ensure!(!ok && err.contains("not a redis:// URL"), "{err}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plain.toml");
    std::fs::write(&file, "redis = [\"redis://127.0.0.1:6380\"]\n")?;
    let (ok, _, err) = run(&["check-config", &file.display().to_string()], &[]).await?;
    ensure!(ok, "{err}");
    Ok(())
}

/// A Redis password in the URL never reaches stdout or stderr: not in the startup line, not in
/// `check-config`, not when Redis cannot be reached (single and cluster).
#[tokio::test]
async fn redis_passwords_are_not_printed() -> Result<()> {
    const PASSWORD: &str = "redis-password-not-for-logs";
    // A real Redis that requires the password, so the server starts and prints its engine.
    let redis = redistribute_testkit::RedisServer::start().await?;
    redis
        .command(&["CONFIG", "SET", "requirepass", PASSWORD])
        .await?;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
    let mut server = redistribute_testkit::ServerProcess::start(
        &server_binary(),
        &["--redis".into(), url.clone()],
    )
    .await?;
    let logs = server.logs();
    ensure!(logs.contains("redis at redis://:***@"), "{logs}");
    ensure!(
        !logs.contains(PASSWORD),
        "password printed at start: {logs}"
    );
    server.kill().await?;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("redis.toml");
    std::fs::write(&file, format!("redis = [\"{url}\"]\n"))?;
    let (ok, out, err) = run(&["check-config", &file.display().to_string()], &[]).await?;
    ensure!(ok && out.contains(":***@"), "{out} {err}");
    ensure!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out} {err}"
    );

    // Nothing listens on port 1: the start fails and the error names the URL without it.
    let dead = format!("redis://user:{PASSWORD}@127.0.0.1:1");
    for flag in ["--redis", "--redis-cluster"] {
        let (ok, out, err) = run(&["serve", "--listen", "127.0.0.1:0", flag, &dead], &[]).await?;
        ensure!(!ok, "{flag}: started without Redis");
        ensure!(
            !out.contains(PASSWORD) && !err.contains(PASSWORD),
            "{flag}: {out} {err}"
        );
    }
    Ok(())
}
