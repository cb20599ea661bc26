#!/usr/bin/env bash
# Builds BackfillFFI.xcframework (device + simulator static libraries, with the C header and
# module map) for the Swift package. Needs macOS with Xcode and rustup; it cannot run on Linux
# (this repository's CI has no Apple toolchain).
#
#   bindings/swift/ios/build-xcframework.sh          # -> bindings/swift/BackfillFFI.xcframework
#
# Package.swift uses the XCFramework when it exists, else the library that cargo built for the host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
swift_dir="$(cd "$here/.." && pwd)"
root="$(cd "$swift_dir/../.." && pwd)"
# The shipping profile (LTO, one codegen unit, opt-level "s", unwinding kept).
profile="${BACKFILL_FFI_PROFILE:-release-ffi}"
# The bundled SQLite without the modules the SDK never uses, as bindings/build-library.sh builds it.
export LIBSQLITE3_FLAGS="${LIBSQLITE3_FLAGS:--USQLITE_ENABLE_FTS3 -USQLITE_ENABLE_FTS3_PARENTHESIS -USQLITE_ENABLE_FTS5 \
-USQLITE_ENABLE_RTREE -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION}"
work="$root/target/ios-xcframework"
out="$swift_dir/BackfillFFI.xcframework"
export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"

[[ "$(uname)" == Darwin ]] || { echo "build-xcframework.sh needs macOS with Xcode" >&2; exit 69; }
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
rustup target add "${targets[@]}"

cd "$root"
rm -rf "$work" "$out"
mkdir -p "$work/headers"
cp "$swift_dir/Sources/BackfillFFI/BackfillFFI.h" "$work/headers/"
# Inside an XCFramework the module map must be called module.modulemap, and it links nothing:
# the static library comes with the framework.
cat >"$work/headers/module.modulemap" <<'MAP'
module BackfillFFI {
    header "BackfillFFI.h"
    export *
}
MAP

for target in "${targets[@]}"; do
  # A static library whatever the crate's own crate-type list says. Mobile builds upload through
  # URLSession (the foreign transport), so the built-in reqwest transport is left out.
  cargo rustc -p backfill-ffi --lib --crate-type staticlib --profile "$profile" \
    --target "$target" --no-default-features
  dir="target/$target/$profile"
  arch="${target%%-*}"; [[ "$arch" == aarch64 ]] && arch=arm64

  # The bundled SQLite (and Rust's std) must not answer for the app's own sqlite3_* calls, which
  # go to iOS's system SQLite, nor clash with another static SQLite (SQLCipher, GRDB's): prelink
  # everything into one object in which only the uniffi entry points stay global. `ld -r` turns
  # every symbol left out of the list into a local one.
  xcrun ld -r -arch "$arch" -o "$dir/backfill_prelinked.o" \
    -exported_symbols_list "$here/exported-symbols.txt" \
    -force_load "$dir/libbackfill_ffi.a"
  if nm -gU "$dir/backfill_prelinked.o" | grep -q ' _sqlite3_'; then
    echo "$target: sqlite3_* symbols are still global" >&2; exit 1
  fi
  rm -f "$dir/libbackfill_hidden.a"
  xcrun libtool -static -o "$dir/libbackfill_hidden.a" "$dir/backfill_prelinked.o"
done

# The simulator slice is one fat library for Apple silicon and Intel Macs.
mkdir -p "$work/sim"
xcrun lipo -create -output "$work/sim/libbackfill_ffi.a" \
  "target/aarch64-apple-ios-sim/$profile/libbackfill_hidden.a" \
  "target/x86_64-apple-ios/$profile/libbackfill_hidden.a"
mkdir -p "$work/device"
cp "target/aarch64-apple-ios/$profile/libbackfill_hidden.a" "$work/device/libbackfill_ffi.a"

xcodebuild -create-xcframework \
  -library "$work/device/libbackfill_ffi.a" -headers "$work/headers" \
  -library "$work/sim/libbackfill_ffi.a" -headers "$work/headers" \
  -output "$out"
du -sh "$out"/*/libbackfill_ffi.a
