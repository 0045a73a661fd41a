//! `cargo run -p fieldreport-ffi --example uniffi-bindgen -- generate …`:
//! the bindings generator at exactly the library's uniffi version.

fn main() {
    uniffi::uniffi_bindgen_main()
}
