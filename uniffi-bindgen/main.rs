//! `cargo run -p backfill-uniffi-bindgen -- generate --library <libbackfill_ffi.so> --language
//! python|kotlin|swift --out-dir <dir>`: uniffi's own command line, built with the same uniffi
//! version as `backfill-ffi` (the two must match). `bindings/generate.sh` runs it.

fn main() {
    uniffi::uniffi_bindgen_main()
}
