//! Embeds the XDP object built by `cargo xtask build` into the agent, so the
//! binary runs on its own. The object's path comes from `UDP_EBPF_OBJECT`
//! (set by xtask), else the default output path of the eBPF build. Without
//! either, an empty object is embedded and `udp-agent run` says how to build
//! one; host-only builds (`cargo check`, clippy, unit tests) keep working.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=UDP_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("udp-ebpf.o");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let default = manifest.join("../target/bpf/bpfel-unknown-none/release/udp-ebpf");
    let source = env::var_os("UDP_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-changed={}", source.display());
    match fs::read(&source) {
        Ok(bytes) => fs::write(&out, bytes).expect("write embedded eBPF object"),
        Err(_) => fs::write(&out, []).expect("write empty eBPF object"),
    }
}
