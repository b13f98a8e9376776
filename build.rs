//! Builds `berth-agent` as a static binary (a static-pie glibc build, which runs in any
//! x86_64 image, busybox or scratch) so that `berthd` can carry it embedded: the same
//! `cargo build` that makes berthd makes the agent. A nested cargo with its own target
//! dir under OUT_DIR (the outer build holds the lock on the main one); the explicit
//! `--target` keeps `+crt-static` off build scripts and proc macros.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = std::env::var("TARGET").expect("TARGET");
    for dir in ["agent/src", "agent/Cargo.toml", "wire/src", "wire/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", manifest.join(dir).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("agent-target");
    let status = Command::new(cargo)
        .args(["build", "--release", "--package", "berth-agent", "--target", &target])
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Small: no debug info, no symbols (it is mounted into every container).
        .args(["--config", "profile.release.debug=false", "--config", "profile.release.strip=\"symbols\""])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo to build berth-agent");
    assert!(status.success(), "building berth-agent failed");
    let bin = target_dir.join(&target).join("release").join("berth-agent");
    assert!(bin.is_file(), "no agent binary at {}", bin.display());
    println!("cargo:rustc-env=BERTH_AGENT_BIN={}", bin.display());
    // Names the installed copy, so that berthd need not read (and keep in memory) its
    // embedded copy to learn whether the installed one is current.
    let bytes = std::fs::read(&bin).expect("read the agent binary");
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    println!("cargo:rustc-env=BERTH_AGENT_HASH={hash:016x}");
}
