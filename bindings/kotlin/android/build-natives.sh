#!/usr/bin/env bash
# Builds libbackfill_ffi.so for Android's three ABIs into src/main/jniLibs, 16 KB-aligned, and
# checks the alignment. Needs the Android NDK (ANDROID_NDK_HOME), rustup and cargo-ndk; it
# cannot run on a machine without the NDK (this repository's CI has none).
#
#   ANDROID_NDK_HOME=$HOME/Android/Sdk/ndk/27.2.12479018 bindings/kotlin/android/build-natives.sh
#   (cd bindings/kotlin/android && gradle assembleRelease)   # -> build/outputs/aar/*.aar
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$here/src/main/jniLibs"
# The shipping profile (LTO, one codegen unit, opt-level "s", unwinding kept).
profile="${BACKFILL_FFI_PROFILE:-release-ffi}"
# The bundled SQLite without the modules the SDK never uses, as bindings/build-library.sh builds it.
export LIBSQLITE3_FLAGS="${LIBSQLITE3_FLAGS:--USQLITE_ENABLE_FTS3 -USQLITE_ENABLE_FTS3_PARENTHESIS -USQLITE_ENABLE_FTS5 \
-USQLITE_ENABLE_RTREE -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION}"

: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to the Android NDK (r27 or newer)}"
command -v cargo-ndk >/dev/null || cargo install cargo-ndk --locked
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android

# Google Play requires 16 KB-aligned ELF segments for apps targeting Android 15+; NDK r28 and newer
# link that way by default, older ones need the flag. Rust's own objects are linked by the NDK's
# clang through cargo-ndk, so the flag goes to the linker for every Android target.
page="-C link-arg=-Wl,-z,max-page-size=16384"
export CARGO_TARGET_AARCH64_LINUX_ANDROID_RUSTFLAGS="$page"
export CARGO_TARGET_ARMV7_LINUX_ANDROIDEABI_RUSTFLAGS="$page"
export CARGO_TARGET_X86_64_LINUX_ANDROID_RUSTFLAGS="$page"

# Mobile builds upload through the app's own HTTP stack (the foreign transport), so the built-in
# reqwest transport is left out: no default features.
cd "$root"
cargo ndk --platform 24 -t arm64-v8a -t armeabi-v7a -t x86_64 -o "$out" \
  build --profile "$profile" -p backfill-ffi --no-default-features

# Every LOAD segment must be aligned to at least 16 KB (0x4000).
readelf="$(ls "$ANDROID_NDK_HOME"/toolchains/llvm/prebuilt/*/bin/llvm-readelf 2>/dev/null | head -1)"
readelf="${readelf:-readelf}"
for abi in arm64-v8a armeabi-v7a x86_64; do
  lib="$out/$abi/libbackfill_ffi.so"
  "$readelf" -lW "$lib" | awk -v lib="$lib" '
    $1 == "LOAD" { n++; a = strtonum($NF); if (a < 16384) { bad = 1; print lib ": LOAD segment aligned to " $NF } }
    END { if (n == 0 || bad) exit 1 }'
  printf '%-12s %8d bytes, 16 KB-aligned\n' "$abi" "$(stat -c %s "$lib")"
done
