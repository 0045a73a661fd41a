//! `cargo run -p fieldreport-ffi --features bindgen --bin uniffi-bindgen -- generate …`:
//! the bindings generator at exactly the library's uniffi version.

fn main() {
    uniffi::uniffi_bindgen_main()
}
