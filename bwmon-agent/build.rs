//! Embeds the eBPF object built by `cargo xtask build`.
//!
//! `cargo build` of the user-space crates keeps working without the eBPF toolchain: when no
//! object is found, an empty one is embedded and the agent says at run time how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bwmon_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=BWMON_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("BWMON_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/bwmon"));
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("bwmon.bpf.o");
    match fs::read(&object) {
        Ok(bytes) if !bytes.is_empty() => {
            fs::write(&out, bytes).expect("write the embedded eBPF object into OUT_DIR");
            println!("cargo::rustc-cfg=bwmon_ebpf_embedded");
        }
        _ => {
            fs::write(&out, []).expect("write an empty eBPF object into OUT_DIR");
            println!(
                "cargo::warning=no eBPF object at {}: the agent is built without its datapath (run `cargo xtask build`)",
                object.display()
            );
        }
    }
}
