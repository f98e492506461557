//! The workspace's structure, checked: the server library does not depend on the client crate
//! (the `redistribute` command is the separate package `redistribute-cli`), the core modules
//! (engine, hub, feed, consumer-group dispatch, core state) import no transport, listener or
//! HTTP/WebSocket library, and no source file is over [`MAX_LINES`] lines.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `cargo metadata --format-version 1` plus `extra` arguments.
fn metadata(extra: &[&str]) -> Result<Value> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1"])
        .args(extra)
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn package<'a>(meta: &'a Value, name: &str) -> Result<&'a Value> {
    meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .find(|p| p["name"] == name)
        .with_context(|| format!("no package {name}"))
}

/// Names of the normal (not dev, not build) dependencies a package declares.
fn normal_dependencies(package: &Value) -> Result<BTreeSet<String>> {
    Ok(package["dependencies"]
        .as_array()
        .context("dependencies")?
        .iter()
        .filter(|d| d["kind"].is_null())
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn the_server_library_does_not_declare_the_client() -> Result<()> {
    let meta = metadata(&["--no-deps"])?;
    let server = package(&meta, "redistribute-server")?;
    let deps = normal_dependencies(server)?;
    ensure!(
        deps.contains("redistribute-protocol"),
        "the scan reads the wrong field: the server must depend on the protocol crate, got {deps:?}"
    );
    ensure!(
        !deps.contains("redistribute-client"),
        "redistribute-server depends on redistribute-client: {deps:?}"
    );
    let bins: Vec<&str> = server["targets"]
        .as_array()
        .context("targets")?
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    ensure!(bins.is_empty(), "redistribute-server has binaries {bins:?}");

    let cli = package(&meta, "redistribute-cli")?;
    let cli_deps = normal_dependencies(cli)?;
    ensure!(
        cli_deps.contains("redistribute-server") && cli_deps.contains("redistribute-client"),
        "the CLI builds on the server and the client: {cli_deps:?}"
    );
    let has_binary = cli["targets"]
        .as_array()
        .context("targets")?
        .iter()
        .any(|t| t["name"] == "redistribute" && t["kind"][0] == "bin");
    ensure!(has_binary, "redistribute-cli has no `redistribute` binary");
    Ok(())
}

/// With the resolved graph: nothing the server library builds (its normal dependencies,
/// transitively) is the client crate.
#[test]
fn the_server_library_does_not_build_the_client() -> Result<()> {
    let meta = metadata(&[])?;
    let id_of = |name: &str| -> Result<String> {
        Ok(package(&meta, name)?["id"]
            .as_str()
            .context("id")?
            .to_owned())
    };
    let server = id_of("redistribute-server")?;
    let client = id_of("redistribute-client")?;
    let nodes = meta["resolve"]["nodes"].as_array().context("resolve")?;
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id);
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([server.clone()]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(node) = node(&id) else {
            bail!("{id} is not in the resolved graph")
        };
        for dep in node["deps"].as_array().context("deps")? {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if normal {
                queue.push_back(dep["pkg"].as_str().context("pkg")?.to_owned());
            }
        }
    }
    ensure!(
        seen.len() > 10,
        "the walk found too few dependencies ({}): it reads the wrong fields",
        seen.len()
    );
    ensure!(
        !seen.contains(&client),
        "redistribute-server builds redistribute-client"
    );
    Ok(())
}

/// Most lines a source file may have.
const MAX_LINES: usize = 600;

/// Directories never walked: build output, installed JavaScript packages, version control.
const SKIPPED_DIRS: [&str; 3] = ["target", "node_modules", ".git"];

/// Every `.rs` file under `path` (a file or a directory), skipping [`SKIPPED_DIRS`].
fn rust_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("{}", path.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|name| SKIPPED_DIRS.iter().any(|skip| name == *skip))
            {
                continue;
            }
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// What a core module must not name: the server's transports and listeners, and the HTTP and
/// WebSocket libraries they are built on.
const TRANSPORT_NAMES: [&str; 7] = [
    "crate::transport",
    "crate::listener",
    "super::transport",
    "super::listener",
    "axum",
    "tungstenite",
    "hyper",
];

/// The lines of `text` (outside comments) naming a transport.
fn transport_imports(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| TRANSPORT_NAMES.iter().any(|name| line.contains(name)))
        .map(|line| line.trim().to_owned())
        .collect()
}

#[test]
fn core_modules_import_no_transport() -> Result<()> {
    let src = root().join("server/src");
    let mut files = Vec::new();
    for core in [
        "engine",
        "hub.rs",
        "feed",
        "group_dispatch",
        "core_state.rs",
    ] {
        let path = src.join(core);
        ensure!(
            path.exists(),
            "{} is gone: update this test",
            path.display()
        );
        rust_files(&path, &mut files)?;
    }
    ensure!(files.len() > 15, "too few files scanned: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for line in transport_imports(&text) {
            found.push(format!("{}: {line}", file.display()));
        }
    }
    ensure!(
        found.is_empty(),
        "core modules import a transport:\n{}",
        found.join("\n")
    );
    // The scan does see imports: the WebSocket transport names axum.
    let ws = std::fs::read_to_string(src.join("transport/ws_connection/mod.rs"))?;
    ensure!(
        !transport_imports(&ws).is_empty(),
        "the scan misses the WebSocket transport's imports"
    );
    Ok(())
}

#[test]
fn the_scan_ignores_comments_and_catches_paths() {
    assert!(transport_imports("//! built on axum\n/// see crate::transport").is_empty());
    assert_eq!(
        transport_imports("use crate::engine::Batch;\n    let x = crate::transport::ws::f();"),
        vec!["let x = crate::transport::ws::f();"]
    );
    assert_eq!(
        transport_imports("use axum::extract::ws::Utf8Bytes;").len(),
        1
    );
}

/// No source file of the workspace is over [`MAX_LINES`] lines: a larger one is split by
/// concern into modules. Fails naming every file over the limit.
#[test]
fn no_source_file_over_600_lines() -> Result<()> {
    let root = root();
    let mut files = Vec::new();
    rust_files(&root, &mut files)?;
    files.sort();
    // The walk found the workspace (this file, at least), so an empty result cannot pass.
    ensure!(
        files
            .iter()
            .any(|f| f.ends_with("tests/tests/architecture.rs")),
        "the walk from {root:?} missed the workspace's own files"
    );
    let mut too_long = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).with_context(|| format!("{path:?}"))?;
        let lines = text.lines().count();
        if lines > MAX_LINES {
            let shown = path.strip_prefix(&root).unwrap_or(path);
            too_long.push(format!("{} ({lines} lines)", shown.display()));
        }
    }
    ensure!(
        too_long.is_empty(),
        "{} source files are over {MAX_LINES} lines; split each by concern:\n  {}",
        too_long.len(),
        too_long.join("\n  ")
    );
    Ok(())
}

/// `ARCHITECTURE.md` names every module of the server, the protocol crate and both clients
/// (each file or directory directly under their `src/`, and each module of the server's
/// `engine/` and the drivers), so a module added or renamed without updating the map fails here.
#[test]
fn the_architecture_map_names_every_module() -> Result<()> {
    let root = root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("ARCHITECTURE.md")?;
    let dirs = [
        "server/src",
        "server/src/engine",
        "server/src/engine/redis",
        "protocol/src",
        "protocol/src/session",
        "client-native/src",
        "client-native/src/driver",
        "client-wasm/src",
        "client-wasm/src/driver",
    ];
    let mut missing = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(root.join(dir)).with_context(|| dir.to_owned())? {
            let path = entry?.path();
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .context("file name")?
                .to_owned();
            if matches!(name.as_str(), "lib" | "mod" | "main" | "assets") {
                continue;
            }
            if path.is_file() && path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let named = [
                format!("`{name}`"),
                format!("`{name}/`"),
                format!("`{name}` +"),
            ];
            if !named.iter().any(|n| map.contains(n.as_str())) {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules (add them to its map):\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}
