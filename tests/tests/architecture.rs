//! Structural checks of the workspace that keep its modules small and cut by concern.

use std::path::{Path, PathBuf};

/// Most lines a source file may have.
const MAX_LINES: usize = 600;

/// Directories never walked: build output, installed JavaScript packages, version control.
const SKIPPED_DIRS: [&str; 3] = ["target", "node_modules", ".git"];

/// Every `.rs` file under `dir`, skipping [`SKIPPED_DIRS`].
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
        let path = entry.path();
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
        if kind.is_dir() {
            let name = entry.file_name();
            if !SKIPPED_DIRS.iter().any(|skip| name == *skip) {
                rust_files(&path, found);
            }
        } else if kind.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// No source file of the workspace is over [`MAX_LINES`] lines: a larger one is split by
/// concern into modules. Fails naming every file over the limit.
#[test]
fn no_source_file_over_600_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    // The walk found the workspace (this file, at least), so an empty result cannot pass.
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("tests/tests/architecture.rs")),
        "the walk from {root:?} missed the workspace's own files"
    );
    let too_long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
            let lines = text.lines().count();
            (lines > MAX_LINES).then(|| {
                let shown = path.strip_prefix(root).unwrap_or(path);
                format!("{} ({lines} lines)", shown.display())
            })
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "{} source files are over {MAX_LINES} lines; split each by concern:\n  {}",
        too_long.len(),
        too_long.join("\n  ")
    );
}
