#!/usr/bin/env bash
# Runs every check and test of the workspace. On a fresh Debian machine with the Rust toolchain
# it first installs what is missing: redis-server (the tests start their own on free ports),
# rustfmt/clippy, and the wasm32 target used to check that the protocol crate builds for
# browsers.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup target list --installed | grep -q '^wasm32-unknown-unknown$' \
    || rustup target add wasm32-unknown-unknown
fi

log "format"
cargo fmt --all -- --check

log "clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "protocol crate builds for wasm32"
cargo check -q -p redistribute-protocol --target wasm32-unknown-unknown

log "tests"
cargo build -q -p redistribute-server --bin redistribute
cargo test --workspace
