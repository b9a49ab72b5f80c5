//! Records the git revision for `orchestrator_build_info{revision}` (or "unknown" outside a checkout), and
//! builds the spawn helper the orchestrator embeds (`spawner/main.rs`, x86_64 Linux only).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FOG_REVISION={revision}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    spawner();
}

/// Compiles `spawner/main.rs` into `$OUT_DIR/fog-spawn` and sets `cfg(fog_spawner)`: a static program
/// without libc, so it cannot be an ordinary target of this package (it needs `panic = "abort"` and its
/// own link arguments). Elsewhere than x86_64 Linux the orchestrator's binary stays its own spawn helper.
fn spawner() {
    println!("cargo::rustc-check-cfg=cfg(fog_spawner)");
    println!("cargo:rerun-if-changed=spawner/main.rs");
    let variable = |name: &str| std::env::var(name).unwrap_or_default();
    if variable("CARGO_CFG_TARGET_ARCH") != "x86_64" || variable("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    let output = PathBuf::from(variable("OUT_DIR")).join("fog-spawn");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .args(["--edition=2024", "--crate-type=bin", "--crate-name=fog_spawn"])
        .args(["--target", &variable("TARGET")])
        .args([
            "-D",
            "warnings",
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "strip=symbols",
        ])
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .arg("-o")
        .arg(&output)
        .arg("spawner/main.rs")
        .status();
    match built {
        Ok(status) if status.success() => println!("cargo:rustc-cfg=fog_spawner"),
        Ok(status) => panic!("building the spawn helper spawner/main.rs failed: {status}"),
        Err(error) => panic!("cannot run rustc to build the spawn helper: {error}"),
    }
}
