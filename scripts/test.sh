#!/usr/bin/env bash
# Runs every check and test of the workspace. On a fresh Debian machine with the Rust toolchain
# it first installs what is missing: redis-server (the tests start their own on free ports),
# rustfmt/clippy, the wasm32 target, and for the browser client Chromium + chromedriver
# (Debian's), Node.js/npm, and wasm-bindgen-cli at the version in Cargo.lock (client-wasm/build.sh
# installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
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

# The publishable crates package as they would be published (no upload): versioned path
# dependencies, metadata, LICENSE and README present. `--no-verify` because the tests below
# build the same sources (verifying rebuilds all four crates from scratch: 10 min on a loaded
# 2-core machine against 25 s here). The declared MSRV and the docs (every flag documented, no
# dangling file references) are checked by tests/tests/packaging.rs and tests/tests/docs.rs.
log "package (publishable crates, no upload)"
cargo package --no-verify --allow-dirty -q \
  -p redistribute-protocol -p redistribute-client -p redistribute-server -p redistribute-cli

# The API documentation of the published crates builds without a warning: no broken or private
# intra-doc link, no stray HTML.
log "rustdoc (published crates, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps \
  -p redistribute-protocol -p redistribute-client -p redistribute-server -p redistribute-cli

log "protocol crate builds for wasm32"
cargo check -q -p redistribute-protocol --target wasm32-unknown-unknown

log "clippy (browser client, wasm32)"
cargo clippy -q -p redistribute-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings

log "tests"
cargo build -q -p redistribute-cli --bin redistribute
cargo test --workspace

# The chaos soak: its own Redis and server instances, every client kind, seeded faults, and an
# exact ledger; it exits non-zero on any message lost without a reported gap or duplicated.
log "chaos soak (${CHAOS_SECONDS:-60} s)"
cargo build -q --release -p redistribute-cli -p chaos
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
CHAOS_SERVER_BIN="$target_dir/release/redistribute" \
  "$target_dir/release/chaos" --seconds "${CHAOS_SECONDS:-60}"

# Browser client: build the npm package (installs the matching wasm-bindgen-cli when missing),
# run its wasm tests in headless Chromium, then the chat example end to end with Playwright.
# build.sh prints the .wasm size and fails above its gzipped budget (WASM_GZIP_BUDGET).
log "browser client: npm package (and its size budget)"
QUIET=1 client-wasm/build.sh

log "browser client: wasm tests in headless Chromium"
CHROMEDRIVER="$(command -v chromedriver)" \
  cargo test -p redistribute-wasm --target wasm32-unknown-unknown

log "browser client: TypeScript types (tsc --noEmit on a typed app)"
(cd client-wasm/tests-e2e && npm ci --silent --no-audit --no-fund && npx tsc -p tsconfig.json)

log "browser client: end-to-end (Playwright, Chromium, two servers, Redis; a Vite build of the packed package in Chromium; Node.js over the network)"
(cd client-wasm/tests-e2e && npm test --silent)
