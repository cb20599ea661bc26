#!/usr/bin/env bash
# Generates the Kotlin and Swift bindings of backfill-ffi with the workspace's uniffi-bindgen, in
# library mode from the built library, into the folders the Kotlin and Swift projects build from:
#   bindings/kotlin/src/main/kotlin/dev/backfill/internal/backfill_ffi.kt
#   bindings/swift/Sources/BackfillBindings/BackfillBindings.swift
#   bindings/swift/Sources/BackfillFFI/BackfillFFI.h
# The generated files are committed. With --check, nothing is written: the script fails when the
# committed files differ from what it generates (CI runs it so).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
check=false
[[ "${1:-}" == --check ]] && check=true

cargo build -q -p backfill-ffi --lib
cargo build -q --bin uniffi-bindgen
case "$(uname)" in
  Darwin) lib=target/debug/libbackfill_ffi.dylib ;;
  *) lib=target/debug/libbackfill_ffi.so ;;
esac

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# --no-format: the output must not depend on whether ktlint or swiftformat is installed.
target/debug/uniffi-bindgen generate --no-format --config bindings/uniffi-mobile.toml \
  --language kotlin --language swift --out-dir "$out" "$lib" >/dev/null

pairs=(
  "$out/dev/backfill/internal/backfill_ffi.kt" bindings/kotlin/src/main/kotlin/dev/backfill/internal/backfill_ffi.kt
  "$out/BackfillBindings.swift" bindings/swift/Sources/BackfillBindings/BackfillBindings.swift
  "$out/BackfillFFI.h" bindings/swift/Sources/BackfillFFI/BackfillFFI.h
)
stale=0
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
  generated="${pairs[i]}" committed="${pairs[i + 1]}"
  if $check; then
    if ! diff -u "$committed" "$generated" >"$out/diff" 2>&1; then
      echo "stale generated binding: $committed" >&2
      head -40 "$out/diff" >&2
      stale=1
    fi
  else
    mkdir -p "$(dirname "$committed")"
    cp "$generated" "$committed"
    echo "wrote $committed"
  fi
done
if ((stale)); then
  echo "the generated bindings differ from backfill-ffi: run bindings/generate-mobile.sh and commit" >&2
  exit 1
fi
if $check; then echo "generated Kotlin and Swift bindings match backfill-ffi"; fi
