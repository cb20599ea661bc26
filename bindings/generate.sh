#!/usr/bin/env bash
# Generates the uniffi bindings of backfill-ffi in library mode, into bindings/<language>/generated.
# Deterministic: unformatted output of the workspace's own uniffi-bindgen (same uniffi version as
# the library), from the library's embedded metadata. `.ci/run` runs it and fails on any diff.
#
#   bindings/generate.sh              # python, kotlin and swift
#   bindings/generate.sh python       # one language
set -euo pipefail
cd "$(dirname "$0")/.."
languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(python kotlin swift)

cargo build --quiet -p backfill-ffi --lib
library="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/libbackfill_ffi.so"
for language in "${languages[@]}"; do
  out="bindings/$language/generated"
  rm -rf "$out"
  mkdir -p "$out"
  cargo run --quiet -p backfill-uniffi-bindgen -- generate --no-format \
    --library "$library" --language "$language" --out-dir "$out"
done
