//! Builds the XDP program (`udp-ebpf`) and embeds it in the agent, so
//! that `cargo build`, `cargo run`, `cargo test` and `cargo xtask build`
//! all give a binary that captures. The toolchain is the one `cargo xtask
//! setup` finds or installs ([`udp_ebpf_build`]); where there is none, the
//! build fails and says to run it. The object is built into
//! `target/bpf`, shared by every profile and by xtask, so it is built once
//! and again only when `udp-ebpf` or `udp-ebpf-common` change.
//!
//! Not with aya-build (0.2.0, the release that builds with Rust 1.95; 0.2.1
//! needs 1.98), as aya-template does: it cannot drive the toolchain this
//! project installs. Where rustup is on PATH it always runs `rustup run
//! <toolchain> cargo`, and Debian's `rustc-web` is no rustup toolchain;
//! `RUSTC_BOOTSTRAP=1`, which that rustc needs for the program's nightly
//! features, makes it add `-Z build-std=core`, which would need
//! `rust-web-src` and a build of `core` where the route installs a
//! prebuilt one; it sets `CARGO_ENCODED_RUSTFLAGS` itself, which drops the
//! `-Ctarget-cpu=v3` the rate limiters' compare-and-swap needs; and it
//! builds into `OUT_DIR`, once per profile, and only a package of this
//! workspace (which `udp-ebpf`, with its own target and profiles, is not).
//!
//! Two variables change what is embedded:
//! - `UDP_EBPF_OBJECT=PATH`: embed this object instead of building one
//!   (a packager with an object built elsewhere). It must exist.
//! - `AYA_BUILD_SKIP=1` (aya-build's name for it): embed nothing, for
//!   `cargo check`/clippy/an editor on a machine without the toolchain.
//!   The build warns, and `udp-agent run` refuses to start.
//!
//! `UDP_EBPF_ROUTE` (auto, debian, rustup) picks the toolchain route, as
//! `cargo xtask --route` does.
//!
//! Also sets `BUILD_GIT_REV`, the git revision `udp-agent --version`
//! prints (see [`git_revision`]). Not an `UDP_AGENT_*` name: cargo also
//! puts it in the environment of `cargo test` and `cargo run`, where the
//! agent reads its settings from `UDP_AGENT_*` variables.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use udp_ebpf_build::{BPF_TARGET, Probe, ROUTE_ENV, RouteChoice, object_path, sources, target_dir};

const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> ExitCode {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("udp-ebpf.o");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("udp-agent sits in the workspace");
    println!("cargo:rustc-env=BUILD_GIT_REV={}", git_revision(&manifest));
    match object(root) {
        Ok(bytes) => {
            fs::write(&out, bytes).expect("write the embedded eBPF object into OUT_DIR");
            ExitCode::SUCCESS
        }
        // A build script that logs errors fails the build; cargo shows
        // them without the rest of its output.
        Err(Failure::Said(message)) => {
            for line in message.lines() {
                println!("cargo::error={line}");
            }
            ExitCode::SUCCESS
        }
        // The compiler's output, which cargo shows for a build script
        // that exits with an error.
        Err(Failure::Build { summary, log }) => {
            eprintln!("{log}");
            println!("cargo::error={summary}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Nothing to embed, for the reason given.
    Said(String),
    /// The eBPF build failed: what it printed.
    Build { summary: String, log: String },
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Said(message)
    }
}

/// The object to embed: built here, or as the variables above say.
fn object(root: &Path) -> Result<Vec<u8>, Failure> {
    for var in [
        "UDP_EBPF_OBJECT",
        SKIP,
        ROUTE_ENV,
        "BPF_LINKER",
        "CARGO_TARGET_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Some(path) = env::var_os("UDP_EBPF_OBJECT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        println!("cargo:rerun-if-changed={}", path.display());
        return fs::read(&path).map_err(|e| {
            Failure::Said(format!(
                "UDP_EBPF_OBJECT={}: {e}. Unset it to build the object here.",
                path.display()
            ))
        });
    }
    if env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!(
            "cargo:warning={SKIP} is set: this udp-agent has no XDP object and cannot capture \
             (unset it to build one)"
        );
        return Ok(Vec::new());
    }
    for source in sources(root) {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let choice = RouteChoice::from_env()?;
    let probe = Probe::run();
    let Some(route) = probe.route(choice) else {
        return Err(Failure::Said(format!(
            "no toolchain here builds the XDP program (udp-ebpf, for {BPF_TARGET}); \
             run `cargo xtask setup`, which installs it (as root) or prints the commands to run.\n\
             {}\n\
             (For `cargo check` or clippy alone, {SKIP}=1 builds an agent without the program.)",
            probe.missing(choice)
        )));
    };
    println!("cargo:rerun-if-changed={}", route.linker().display());
    let target_dir = target_dir(root);
    let mut build = route.build_command(root, &target_dir);
    let built = build
        .output()
        .map_err(|e| format!("could not start the eBPF build ({build:?}): {e}"))?;
    let log = String::from_utf8_lossy(&built.stderr);
    if !built.status.success() {
        return Err(Failure::Build {
            summary: format!(
                "building the XDP program (udp-ebpf) with route {route} failed ({}); \
                 the compiler's output is in the stderr below",
                built.status
            ),
            log: log.into_owned(),
        });
    }
    // Compiler warnings of the eBPF program, shown as cargo shows its own.
    for line in log.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning=udp-ebpf: {line}");
    }
    let object = object_path(&target_dir);
    fs::read(&object).map_err(|e| {
        Failure::Said(format!(
            "the eBPF build succeeded but {} cannot be read: {e}",
            object.display()
        ))
    })
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
