//! The documentation stands alone and stays true to the binary:
//!
//! - `docs/configuration.md` has a row for every serve flag, with its file key, environment
//!   variable and default exactly as the binary states them, and no row for a flag that does
//!   not exist;
//! - no tracked file cites a document outside the repository, and every relative link and
//!   every repository path quoted in Markdown names a file or folder that exists.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use common::STEP;
use redistribute_testkit::server_binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

async fn stdout_of(args: &[&str]) -> Result<String> {
    let output = tokio::time::timeout(
        STEP,
        tokio::process::Command::new(server_binary())
            .args(args)
            .output(),
    )
    .await??;
    ensure!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// (flag, environment variable, default as the doc writes it) per file key, from the binary's
/// sample config.
async fn keys_from_binary() -> Result<BTreeMap<String, (String, String, String)>> {
    let sample = stdout_of(&["config"]).await?;
    let mut keys = BTreeMap::new();
    let mut flag_line = "";
    for line in sample.lines() {
        if let Some(rest) = line.strip_prefix("# Flag ") {
            flag_line = rest;
            continue;
        }
        let Some(entry) = line
            .strip_prefix('#')
            .filter(|e| e.starts_with(|c: char| c.is_ascii_lowercase()))
        else {
            continue;
        };
        let (key, value) = entry.split_once(" = ").context("entry")?;
        let (flag, rest) = flag_line
            .split_once(", environment ")
            .with_context(|| flag_line.to_owned())?;
        let env = rest.split('.').next().unwrap_or_default();
        let default = if flag_line.contains("Not set by default") {
            "—".to_owned()
        } else {
            format!("`{value}`")
        };
        keys.insert(key.to_owned(), (flag.to_owned(), env.to_owned(), default));
    }
    ensure!(keys.len() > 30, "too few keys in {sample}");
    Ok(keys)
}

/// The long flags `redistribute serve --help` lists, without `--help`.
async fn serve_flags() -> Result<BTreeSet<String>> {
    let help = stdout_of(&["serve", "--help"]).await?;
    Ok(help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let name: String = line
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(format!("--{name}"))
        })
        .filter(|name| name != "--" && name != "--help")
        .collect())
}

#[tokio::test]
async fn configuration_reference_documents_every_flag() -> Result<()> {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md"))?;
    let rows: BTreeMap<String, Vec<String>> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            (cells[0].trim_matches('`').to_owned(), cells)
        })
        .filter(|(_, cells)| cells.len() == 5 && cells[1].starts_with("`--"))
        .collect();
    let keys = keys_from_binary().await?;
    let mut problems = Vec::new();
    for (key, (flag, env, default)) in &keys {
        let want = [format!("`{flag}`"), format!("`{env}`"), default.clone()];
        match rows.get(key) {
            None => problems.push(format!("{flag} ({key}) has no row")),
            Some(cells) if cells[1..4] != want => {
                problems.push(format!("row of {key} is {:?}, want {want:?}", &cells[1..4]))
            }
            Some(cells) if cells[4].is_empty() => problems.push(format!("{key} has no meaning")),
            Some(_) => {}
        }
    }
    for key in rows.keys().filter(|k| !keys.contains_key(*k)) {
        problems.push(format!("row for {key}, which the binary does not have"));
    }
    // Every serve flag is a file key, except `--config`, which names the file.
    let flags = serve_flags().await?;
    let documented: BTreeSet<String> = keys.values().map(|(f, _, _)| f.clone()).collect();
    for flag in flags.difference(&documented) {
        if flag != "--config" || !doc.contains("`--config`") {
            problems.push(format!("{flag} is not documented"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Tracked text files, relative to the repository root.
fn tracked_files() -> Result<Vec<PathBuf>> {
    let output = std::process::Command::new("git")
        .current_dir(root())
        .args(["ls-files", "-z"])
        .output()
        .context("git ls-files")?;
    ensure!(output.status.success(), "git ls-files failed");
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| root().join(p).is_file())
        .collect())
}

/// Paths produced by a build, quoted in the docs but never tracked.
const BUILD_OUTPUTS: &[&str] = &["target/", "client-wasm/pkg"];

#[test]
fn docs_reference_only_files_in_the_repository() -> Result<()> {
    let root = root();
    let top: BTreeSet<String> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // Built at run time so that this file does not contain what it looks for.
    let design = ["DESIGN", ".md"].concat();
    let design_section = ["DESIGN", " §"].concat();
    let seed = ["seed `", "0"].concat();
    let outside = [design.as_str(), design_section.as_str(), seed.as_str()];
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in tracked_files()? {
        let Ok(text) = std::fs::read_to_string(root.join(&path)) else {
            continue;
        };
        for needle in outside {
            if text.contains(needle) {
                problems.push(format!("{} cites {needle}", path.display()));
            }
        }
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        // Relative Markdown links: `](target)`.
        for part in text.split("](").skip(1) {
            let target = part.split([')', ' ']).next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if !root.join(dir).join(target).exists() {
                problems.push(format!("{}: link to missing {target}", path.display()));
            }
        }
        // Repository paths in code spans: `docs/protocol.md`, `client-wasm/build.sh`.
        for (i, span) in text.split('`').enumerate() {
            let first = span.split('/').next().unwrap_or_default();
            let is_path = i % 2 == 1
                && span.contains('/')
                && top.contains(first)
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !is_path || BUILD_OUTPUTS.iter().any(|b| span.starts_with(b)) {
                continue;
            }
            checked += 1;
            if !root.join(span).exists() && !root.join(dir).join(span).exists() {
                problems.push(format!("{}: path {span} does not exist", path.display()));
            }
        }
    }
    ensure!(
        checked > 20,
        "only {checked} references found: is the parser broken?"
    );
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
