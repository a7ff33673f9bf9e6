//! Compiles the C eBPF programs in `ebpf/` into OUT_DIR with clang (BTF on).
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["sluice_sock", "sluice_tc", "sluice_xdp"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("../../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", src.join("include").display());
    for entry in std::fs::read_dir(src.join("include")).expect("ebpf/include") {
        let path = entry.expect("ebpf/include entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // asm/types.h lives in the multiarch include dir on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    for prog in PROGRAMS {
        let c = src.join(format!("{prog}.c"));
        println!("cargo:rerun-if-changed={}", c.display());
        let obj = out.join(format!("{prog}.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed to compile {} ({s})", c.display()),
            Err(e) => panic!(
                "cannot run {clang} ({e}): install the `clang-19` and `libbpf-dev` apt packages \
                 (or set SLUICE_CLANG to a clang with the BPF target)"
            ),
        }
    }
}
