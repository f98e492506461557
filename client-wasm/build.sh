#!/usr/bin/env bash
# Builds the npm package `redistribute-client` into client-wasm/pkg/ (ES module for
# `--target web`, .d.ts types, README, package.json). Run from anywhere:
#
#   client-wasm/build.sh          # then: cd client-wasm/pkg && npm pack
#
# Installs what is missing: the wasm32 target, and wasm-bindgen-cli at exactly the version of
# the `wasm-bindgen` crate in Cargo.lock (without --locked, which fails on this registry). The
# .wasm is built with the size-tuned `wasm-release` profile and shrunk with wasm-opt from the npm
# package `binaryen` (client-wasm/tools/) when npm can install it. Never Debian's binaryen: its
# wasm-opt 108 silently breaks wasm-bindgen's output.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

say() { [ -n "${QUIET:-}" ] || printf '%s\n' "$*"; }

if command -v rustup >/dev/null 2>&1 \
  && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown >/dev/null
fi

# The CLI must match the crate version in Cargo.lock exactly.
version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [ -z "$version" ]; then
  echo "build.sh: wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  say "installing wasm-bindgen-cli $version (takes a few minutes)"
  cargo install -q wasm-bindgen-cli --version "$version"
fi

say "building redistribute-wasm (profile wasm-release)"
cargo build -q -p redistribute-wasm --target wasm32-unknown-unknown --profile wasm-release

# Where cargo puts artifacts (honours CARGO_TARGET_DIR and .cargo/config.toml).
target_dir="$(cargo metadata --format-version 1 --no-deps \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
out="$here/pkg"
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name redistribute_client \
  "$target_dir/wasm32-unknown-unknown/wasm-release/redistribute_wasm.wasm"

wasm="$out/redistribute_client_bg.wasm"
tools="$here/tools"
if [ ! -x "$tools/node_modules/.bin/wasm-opt" ] && command -v npm >/dev/null 2>&1; then
  say "installing wasm-opt (npm package binaryen)"
  (cd "$tools" && npm ci --silent --no-audit --no-fund >/dev/null 2>&1) \
    || say "npm could not install binaryen: skipping wasm-opt"
fi
if [ -x "$tools/node_modules/.bin/wasm-opt" ]; then
  # The features Rust enables by default for wasm32-unknown-unknown; all browsers have them.
  # --low-memory-unused and --zero-filled-memory hold for Rust's layout (the stack, then the
  # data, from 1 MiB up) and a module that defines its own memory. For the gzipped size: merge
  # functions that differ only in constants, flatten and re-loop the control flow before -Oz
  # (the passes run in the order given; ~1 KB), and inline a function with one caller only
  # when it is small (~7 KB: the raw file grows by a few KB, but many small functions compress
  # much better than a few huge ones). Then merge the functions that the inlining made
  # similar, and shrink once more (~0.2 KB).
  "$tools/node_modules/.bin/wasm-opt" --merge-similar-functions --flatten --rereloop \
    -Oz --converge --one-caller-inline-max-function-size 20 \
    --merge-similar-functions -Oz \
    --low-memory-unused --zero-filled-memory \
    --strip-producers --strip-target-features \
    --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-reference-types --enable-multivalue \
    "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
else
  say "wasm-opt not available: package left unoptimised"
fi

cp "$here/npm/README.md" "$out/README.md"
crate_version="$(awk -F'"' '/^version = / { print $2; exit }' "$root/Cargo.toml")"
sed "s/@VERSION@/$crate_version/" "$here/npm/package.json" >"$out/package.json"
rm -f "$out/.gitignore"

raw=$(wc -c <"$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "built client-wasm/pkg: wasm $raw bytes ($gz gzipped, gzip -9)"
# String indexing (`&s[a..b]`, `split_at`) anywhere in the linked code brings in its panic
# message, which prints the character a cut falls into: ~4 KB gzipped of Unicode tables.
if grep -q "is not a char boundary" "$wasm"; then
  echo "build.sh: warning: string indexing is linked (~4 KB gzipped); cut with" \
    "redistribute_protocol::json::cut, str::get or split_at_checked instead" >&2
fi
# The size budget of the .wasm, gzipped (what a page downloads): 100 KiB. CI fails above it.
budget="${WASM_GZIP_BUDGET:-102400}"
if [ -x "$tools/node_modules/.bin/wasm-opt" ] && [ "$gz" -gt "$budget" ]; then
  echo "build.sh: the wasm is $gz bytes gzipped, above its budget of $budget" >&2
  exit 1
fi
