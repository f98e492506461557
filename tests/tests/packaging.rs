//! Packaging checks that need no network beyond what a build fetches: the declared minimum Rust
//! version covers every locked dependency that is built, and the publishable crates carry the
//! metadata and files a published crate needs.
//!
//! Only one toolchain is at hand, so the MSRV is derived rather than built: the highest
//! `rust-version` among the locked dependencies reachable on the platforms the workspace builds
//! for (this host and `wasm32-unknown-unknown`) must not exceed any member's declared one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// The crates that are published.
const PUBLISHED: [&str; 4] = [
    "redistribute-protocol",
    "redistribute-client",
    "redistribute-server",
    "redistribute-cli",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `cargo metadata --locked` resolved for one platform.
fn metadata(platform: Option<&str>) -> Result<Value> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"]);
    if let Some(platform) = platform {
        command.args(["--filter-platform", platform]);
    }
    let output = command.output().context("cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `1.88` or `1.88.0` as (1, 88, 0).
fn version(text: &str) -> Result<(u64, u64, u64)> {
    let mut parts = text.split('.').map(str::parse::<u64>);
    let mut next = || parts.next().transpose().map(Option::unwrap_or_default);
    let parsed = (next()?, next()?, next()?);
    ensure!(parsed.0 > 0, "bad rust-version {text:?}");
    Ok(parsed)
}

/// The host's target triple, from `rustc -vV`.
fn host() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output()?;
    let text = String::from_utf8(output.stdout)?;
    match text.lines().find_map(|l| l.strip_prefix("host: ")) {
        Some(host) => Ok(host.to_owned()),
        None => bail!("no host in rustc -vV: {text}"),
    }
}

/// For each workspace member, the dependencies it reaches on `platform` with a rust-version
/// above the member's declared one.
fn too_new(meta: &Value) -> Result<Vec<String>> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    // Per package: (dependency, whether it is only a dev-dependency).
    let deps: BTreeMap<&str, Vec<(&str, bool)>> = meta["resolve"]["nodes"]
        .as_array()
        .context("resolve")?
        .iter()
        .filter_map(|n| {
            let deps = n["deps"].as_array()?.iter().filter_map(|d| {
                let kinds = d["dep_kinds"].as_array()?;
                let dev_only = kinds.iter().all(|k| k["kind"] == "dev");
                Some((d["pkg"].as_str()?, dev_only))
            });
            Some((n["id"].as_str()?, deps.collect()))
        })
        .collect();
    let mut problems = Vec::new();
    for member in meta["workspace_members"].as_array().context("members")? {
        let member = member.as_str().context("member id")?;
        let package = packages[member];
        let name = package["name"].as_str().unwrap_or(member);
        let Some(declared) = package["rust_version"].as_str() else {
            problems.push(format!("{name} declares no rust-version"));
            continue;
        };
        let declared_text = declared;
        let declared = version(declared)?;
        let mut seen = BTreeSet::new();
        let mut stack = vec![member];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            // A member's dev-dependencies are built (its tests); a dependency's are not.
            for &(dep, dev_only) in deps.get(id).into_iter().flatten() {
                if id == member || !dev_only {
                    stack.push(dep);
                }
            }
            let Some(needed) = packages[id]["rust_version"].as_str() else {
                continue;
            };
            if version(needed)? > declared {
                let dep = packages[id]["name"].as_str().unwrap_or(id);
                let dep_version = packages[id]["version"].as_str().unwrap_or("?");
                problems.push(format!(
                    "{name} declares rust-version {declared_text} but {dep} {dep_version} needs {needed}"
                ));
            }
        }
    }
    Ok(problems)
}

/// The declared MSRV is at least what every locked dependency built for the host or the
/// browser needs.
#[test]
fn declared_rust_version_covers_locked_dependencies() -> Result<()> {
    let mut problems = Vec::new();
    for platform in [host()?, "wasm32-unknown-unknown".to_owned()] {
        problems.extend(too_new(&metadata(Some(&platform))?)?);
    }
    problems.sort();
    problems.dedup();
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Each published crate has a description, license, readme, keywords, categories and a
/// `LICENSE` file, and its dependencies on other workspace crates carry a version.
#[test]
fn published_crates_are_complete() -> Result<()> {
    let meta = metadata(None)?;
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = meta["packages"].as_array().context("packages")?;
    for name in PUBLISHED {
        let package = packages
            .iter()
            .find(|p| p["name"] == name && members.contains(p["id"].as_str().unwrap_or("")))
            .with_context(|| format!("{name} is not a workspace member"))?;
        for field in ["description", "license", "readme", "rust_version"] {
            ensure!(package[field].is_string(), "{name} has no {field}");
        }
        for field in ["keywords", "categories", "authors"] {
            let list = package[field].as_array();
            ensure!(list.is_some_and(|l| !l.is_empty()), "{name} has no {field}");
        }
        ensure!(package["publish"].is_null(), "{name} is not publishable");
        let dir = Path::new(package["manifest_path"].as_str().context("manifest")?)
            .parent()
            .context("crate dir")?;
        let license = std::fs::read_to_string(dir.join("LICENSE"))
            .with_context(|| format!("{name} has no LICENSE file"))?;
        ensure!(
            license.starts_with("MIT License"),
            "{name}: LICENSE is not MIT"
        );
        for dep in package["dependencies"].as_array().context("dependencies")? {
            if dep["path"].is_string() && dep["kind"].is_null() {
                ensure!(
                    dep["req"] != "*",
                    "{name} depends on {} by path without a version",
                    dep["name"]
                );
            }
        }
    }
    Ok(())
}
