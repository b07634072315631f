//! Embeds the XDP object built by `cargo xtask build` into the agent, so the
//! binary runs on its own. The object's path comes from `UDP_EBPF_OBJECT`
//! (set by xtask), else the default output path of the eBPF build. Without
//! either, an empty object is embedded and `udp-agent run` says how to build
//! one; host-only builds (`cargo check`, clippy, unit tests) keep working.
//!
//! Also sets `BUILD_GIT_REV`, the git revision `udp-agent --version`
//! prints (see [`git_revision`]). Not an `UDP_AGENT_*` name: cargo also
//! puts it in the environment of `cargo test` and `cargo run`, where the
//! agent reads its settings from `UDP_AGENT_*` variables.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

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
    println!("cargo:rustc-env=BUILD_GIT_REV={}", git_revision(&manifest));
}

/// The commit the source was checked out at (12 hex digits; edits not yet
/// committed are not marked: build scripts do not see them); `BUILD_GIT_REV` from
/// the environment if set (a packager building from a tarball who knows
/// it); otherwise "unknown" (a tarball, or no git installed).
///
/// By hand rather than with a crate such as vergen: it is a few git
/// commands, and the fallback must be a plain "unknown" rather than a
/// crate's placeholder or a build failure.
fn git_revision(manifest: &Path) -> String {
    println!("cargo:rerun-if-env-changed=BUILD_GIT_REV");
    if let Some(rev) = env::var("BUILD_GIT_REV").ok().filter(|r| !r.is_empty()) {
        return rev;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Only this project's own checkout: a tarball unpacked inside some
    // other repository must not print that repository's commit.
    let workspace = manifest.parent().and_then(|p| p.canonicalize().ok());
    let top =
        git(&["rev-parse", "--show-toplevel"]).and_then(|t| Path::new(&t).canonicalize().ok());
    let rev = git(&["rev-parse", "--short=12", "HEAD"]);
    let (Some(rev), true) = (rev, top.is_some() && top == workspace) else {
        return "unknown".to_owned();
    };
    // Rebuild when HEAD moves: a commit or a checkout (HEAD, the branch's
    // ref, or packed-refs after `git gc`). A path that does not exist
    // would make cargo rerun this script on every build.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for what in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &what]) {
            let path = manifest.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    rev
}
