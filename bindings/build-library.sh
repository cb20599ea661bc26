#!/usr/bin/env bash
# Builds backfill-ffi's library for shipping (profile release-ffi) and prints its stripped size.
#
#   bindings/build-library.sh            # without the built-in HTTP (Android, iOS: the app's stack)
#   bindings/build-library.sh --http     # with it (desktop, gateways)
#   CARGO_BUILD_TARGET=aarch64-linux-android bindings/build-library.sh   # another target
#
# The bundled SQLite is built without the modules the SDK never uses (full-text search, R-tree,
# the dbstat table, extension loading): about 0.3 MiB less. Bindings are generated from the
# unstripped library (bindings/generate.sh); ship the stripped copy this prints.
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[ "${1:-}" = "--http" ] && features=(--features http)
export LIBSQLITE3_FLAGS="-USQLITE_ENABLE_FTS3 -USQLITE_ENABLE_FTS3_PARENTHESIS -USQLITE_ENABLE_FTS5 \
-USQLITE_ENABLE_RTREE -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION"
cargo build --quiet -p backfill-ffi --lib --profile release-ffi "${features[@]}"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
out="$target_dir/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}release-ffi"
strip -o "$out/libbackfill_ffi.stripped.so" "$out/libbackfill_ffi.so"
stat -c '%s bytes: %n' "$out/libbackfill_ffi.stripped.so"
