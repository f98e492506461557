//! The `sub` and `pub` commands of the `redistribute` binary, over plain WebSocket and over
//! `wss://` with a test CA.

use super::*;

/// Runs the `redistribute` binary with `args` (no inherited `REDISTRIBUTE_*` variables) and
/// waits for it to exit.
pub(super) async fn run_cli(args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(server_binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REDISTRIBUTE_") {
            cmd.env_remove(key);
        }
    }
    within(&format!("redistribute {args:?}"), cmd.output())
        .await?
        .context("running redistribute")
}

pub(super) fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

pub(super) fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// 4. `redistribute pub` prints the offset, `sub --from 0 --count N` prints exactly N JSON
/// lines and exits 0; bad fields and unreachable targets exit non-zero with a clear message.
#[tokio::test]
async fn sub_and_pub_commands() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let url = server.ws_url();

    let out = run_cli(&["pub", "chat", "text=hello", "n:=5", "--target", &url]).await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let first = String::from_utf8(out.stdout.clone())?.trim().to_owned();
    StreamId::parse(&first).with_context(|| format!("pub printed {first:?}"))?;

    let client = connect(std::slice::from_ref(&url)).await?;
    let mut offsets = vec![first.clone()];
    for seq in 1..10 {
        let offset = within("publish", client.publish("chat", json!({ "seq": seq }))).await??;
        offsets.push(offset.to_string());
    }

    let out = run_cli(&[
        "sub", "chat", "--from", "0", "--count", "4", "--target", &url,
    ])
    .await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let lines = stdout_lines(&out);
    ensure!(lines.len() == 4, "{}", describe(&out));
    ensure!(
        lines[0]
            == json!({"channel": "chat", "offset": first, "fields": {"text": "hello", "n": 5}}),
        "{}",
        lines[0]
    );

    let out = run_cli(&[
        "sub", "chat", "--from", "0", "--count", "10", "--target", &url,
    ])
    .await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let printed: Vec<String> = stdout_lines(&out)
        .iter()
        .map(|l| l["offset"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(printed == offsets, "{printed:?} != {offsets:?}");

    // Resume after an offset: only what came after it.
    let out = run_cli(&[
        "sub",
        "chat",
        "--from",
        &offsets[7],
        "--count",
        "2",
        "--target",
        &url,
    ])
    .await?;
    let printed: Vec<Value> = stdout_lines(&out)
        .iter()
        .map(|l| l["offset"].clone())
        .collect();
    ensure!(
        printed == vec![json!(offsets[8]), json!(offsets[9])],
        "{}",
        describe(&out)
    );

    let out = run_cli(&["pub", "chat", "text", "--target", &url]).await?;
    ensure!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("\"text\"") && stderr.contains("key=value"),
        "{stderr}"
    );
    let out = run_cli(&["pub", "chat", "n:=nope", "--target", &url]).await?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not JSON"));

    // Port 1 (tcpmux) is never served here: connections are refused at once. A port that was
    // free a moment ago may meanwhile belong to another test's server or Redis.
    let dead = "ws://127.0.0.1:1/ws".to_owned();
    for args in [
        vec!["sub", "chat", "--target", &dead, "--give-up-after", "1"],
        vec![
            "pub",
            "chat",
            "a=b",
            "--target",
            &dead,
            "--give-up-after",
            "1",
        ],
    ] {
        let started = Instant::now();
        let out = run_cli(&args).await?;
        ensure!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains(&dead), "{stderr}");
        eprintln!(
            "{} against a dead target: exit after {:?}",
            args[0],
            started.elapsed()
        );
    }
    Ok(())
}

/// 5. wss: to the server's TLS listener with a test CA the client connects when it trusts the CA
/// (library and `--ca-file`), and fails with a clear TLS error when it does not.
#[tokio::test]
async fn wss_with_a_test_ca() -> Result<()> {
    let redis = RedisServer::start().await?;
    let pki = common::pki::Pki::generate()?;
    let server = pki
        .start_server(&["--redis", &redis.url(), "--publish-rate", "100000"])
        .await?;
    let url = format!("wss://127.0.0.1:{}/ws", server.port());

    let client = within(
        "connect over wss",
        Client::builder()
            .targets([url.clone()])
            .add_root_certificate(&pki.ca_pem)
            .connect(),
    )
    .await??;
    let mut secure = within("subscribe", client.subscribe("secure", Offset::Earliest)).await??;
    let mut offsets = Vec::new();
    for seq in 0..20u64 {
        offsets.push(within("publish", client.publish("secure", json!({ "seq": seq }))).await??);
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(next(&mut secure).await?);
    }
    check_exact(&got, &offsets)?;

    let err = within(
        "connect without the CA",
        Client::builder()
            .targets([url.clone()])
            .give_up_after(Duration::from_secs(1))
            .connect(),
    )
    .await?
    .err()
    .context("connected without trusting the CA")?;
    let text = err.to_string();
    ensure!(matches!(err, Error::Unreachable { .. }), "{text}");
    ensure!(
        text.contains(&url) && text.contains("TLS handshake") && text.contains("certificate"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("redistribute-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem)?;
    let ca = ca_file.to_string_lossy().into_owned();
    let out = run_cli(&[
        "sub",
        "secure",
        "--from",
        "0",
        "--count",
        "20",
        "--target",
        &url,
        "--ca-file",
        &ca,
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    ensure!(out.status.success(), "{}", describe(&out));
    ensure!(stdout_lines(&out).len() == 20, "{}", describe(&out));
    Ok(())
}
