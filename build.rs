//! Link options of the static musl binary (`make build-optimized`), where the target decides them.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // (cargo leaves `crt-static` out of CARGO_CFG_TARGET_FEATURE, so the musl target it is: static
    // by default.)
    if std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "musl") {
        // A static-pie binary relocates itself at start from its relative relocations (every
        // vtable, string and function pointer in its data): 24 bytes each as RELA, about 480 KB;
        // packed as RELR (`DT_RELR`, read by musl 1.2.4 and later, which Rust's musl target
        // ships) they are a few KB. The binary stays position-independent (ASLR). GNU ld 2.38+
        // and lld take the option; an older GNU ld warns and ignores it.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
