//! Finding a toolchain that builds the XDP program (`udp-ebpf`) for
//! `bpfel-unknown-none`, and the command that builds it. Used by
//! udp-agent's build.rs, so that every `cargo build` embeds an object built
//! from the source it is built with, and by xtask (`cargo xtask setup`
//! installs what [`Probe`] finds missing).
//!
//! Two routes:
//!
//! * **debian**: Debian's `rustc-web`/`cargo-web` (`/usr/bin/rustc`,
//!   `/usr/bin/cargo`) with the prebuilt `core` for `bpfel-unknown-none`
//!   from `libstd-rust-web-dev-bpf` (`RUSTC_BOOTSTRAP=1` for the nightly
//!   features the program uses), and a `bpf-linker` built against the same
//!   LLVM major version as that rustc (`llvm-N-dev`).
//! * **rustup**: a rustup nightly with `rust-src`, building `core` itself
//!   (`-Z build-std=core`), and a `bpf-linker`.
//!
//! Both build into one target directory (`<target>/bpf`), whoever asks:
//! the eBPF build's own fingerprints then make every later build, for any
//! profile of the agent, a no-op until the eBPF source changes.

use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// LLVM major version of Debian's `rustc-web`, used before rustc is installed
/// (afterwards the version rustc reports wins).
pub const DEFAULT_LLVM_MAJOR: u32 = 22;
/// BTF for aya's map/program loading; BPF ISA v3 for the atomic
/// compare-and-swap the rate limiters use (kernel >= 5.12).
const RUSTFLAGS: &str = "-Cdebuginfo=2 -Clink-arg=--btf -Ctarget-cpu=v3";

/// The route the build uses: `auto`, `debian` or `rustup`
/// (`cargo xtask --route` passes its choice on through it).
pub const ROUTE_ENV: &str = "UDP_EBPF_ROUTE";

/// Which route to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouteChoice {
    /// debian if complete, else rustup nightly if complete.
    #[default]
    Auto,
    /// Debian packages rustc-web/cargo-web/libstd-rust-web-dev-bpf + bpf-linker.
    Debian,
    /// rustup nightly with rust-src, `-Z build-std=core`.
    Rustup,
}

impl RouteChoice {
    pub fn name(self) -> &'static str {
        match self {
            RouteChoice::Auto => "auto",
            RouteChoice::Debian => "debian",
            RouteChoice::Rustup => "rustup",
        }
    }

    /// The choice in [`ROUTE_ENV`]; `auto` if unset.
    pub fn from_env() -> Result<RouteChoice, String> {
        match env::var(ROUTE_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(RouteChoice::Auto),
        }
    }

    pub fn wants_debian(self) -> bool {
        self != RouteChoice::Rustup
    }

    pub fn wants_rustup(self) -> bool {
        self != RouteChoice::Debian
    }
}

impl FromStr for RouteChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [RouteChoice::Auto, RouteChoice::Debian, RouteChoice::Rustup]
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("{ROUTE_ENV}={s:?}: expected auto, debian or rustup"))
    }
}

/// A complete toolchain, ready to build the eBPF object.
#[derive(Debug, Clone)]
pub enum Route {
    Debian {
        llvm_major: u32,
        linker: PathBuf,
    },
    Rustup {
        rustup: PathBuf,
        toolchain: String,
        linker: PathBuf,
    },
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Debian { llvm_major, linker } => write!(
                f,
                "debian ({DEBIAN_CARGO} + {DEBIAN_RUSTC}, LLVM {llvm_major}, prebuilt core; linker {})",
                linker.display()
            ),
            Route::Rustup {
                toolchain, linker, ..
            } => write!(
                f,
                "rustup ({toolchain} with rust-src, -Z build-std=core; linker {})",
                linker.display()
            ),
        }
    }
}

impl Route {
    pub fn linker(&self) -> &Path {
        match self {
            Route::Debian { linker, .. } | Route::Rustup { linker, .. } => linker,
        }
    }

    /// The command that builds `udp-ebpf` (under `root`) into `target_dir`;
    /// the object is then at [`object_path`]`(target_dir)`.
    pub fn build_command(&self, root: &Path, target_dir: &Path) -> Command {
        let mut cmd = match self {
            Route::Debian { .. } => {
                let mut c = Command::new(DEBIAN_CARGO);
                clean_env(&mut c);
                c.env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .args(["build", "--release", "--target", BPF_TARGET]);
                c
            }
            Route::Rustup {
                rustup, toolchain, ..
            } => {
                let mut c = Command::new(rustup);
                clean_env(&mut c);
                c.args(["run", toolchain.as_str(), "cargo", "build"]).args([
                    "-Z",
                    "build-std=core",
                    "--release",
                    "--target",
                    BPF_TARGET,
                ]);
                c
            }
        };
        cmd.current_dir(root.join("udp-ebpf"))
            .env("CARGO_TARGET_DIR", target_dir)
            .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", self.linker())
            .env("RUSTFLAGS", RUSTFLAGS);
        cmd
    }
}

/// Where the build leaves the object.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(BPF_TARGET).join("release").join("udp-ebpf")
}

/// The eBPF build's target directory: `bpf` under cargo's target directory
/// (`CARGO_TARGET_DIR`, relative to the workspace `root`, else
/// `root/target`).
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("bpf")
}

/// The sources the object is built from, under the workspace `root`: what
/// a build script watches to know when to build it again.
pub fn sources(root: &Path) -> [PathBuf; 2] {
    [root.join("udp-ebpf"), root.join("udp-ebpf-common")]
}

/// What the machine has, as far as the two routes are concerned.
#[derive(Debug, Default)]
pub struct Probe {
    // debian route
    pub deb_rustc: bool,
    pub deb_cargo: bool,
    pub deb_core: bool,
    pub deb_llvm_major: Option<u32>,
    // rustup route
    pub rustup: Option<PathBuf>,
    pub nightly: Option<String>,
    pub nightly_rust_src: bool,
    // shared
    pub linker: Option<PathBuf>,
    /// The `libLLVM.so.N` the linker is dynamically linked against, if any.
    pub linker_llvm: Option<u32>,
    pub apt_get: bool,
}

impl Probe {
    pub fn run() -> Probe {
        let mut p = Probe {
            deb_rustc: Path::new(DEBIAN_RUSTC).is_file(),
            deb_cargo: Path::new(DEBIAN_CARGO).is_file(),
            apt_get: find_in_path("apt-get").is_some(),
            ..Probe::default()
        };
        if p.deb_rustc {
            p.deb_core = debian_core_present();
            p.deb_llvm_major = rustc_llvm_major(DEBIAN_RUSTC);
        }
        p.rustup = find_rustup();
        if let Some(rustup) = &p.rustup {
            p.nightly = rustup_nightly(rustup);
            if let Some(nightly) = &p.nightly {
                p.nightly_rust_src = rustup_has_rust_src(rustup, nightly);
            }
        }
        p.linker = find_linker();
        if let Some(linker) = &p.linker {
            p.linker_llvm = linked_llvm_major(linker);
        }
        p
    }

    /// The complete route `choice` allows, if there is one.
    pub fn route(&self, choice: RouteChoice) -> Option<Route> {
        match choice {
            RouteChoice::Auto => self.debian().or_else(|| self.rustup_route()),
            RouteChoice::Debian => self.debian(),
            RouteChoice::Rustup => self.rustup_route(),
        }
    }

    pub fn llvm_major(&self) -> u32 {
        self.deb_llvm_major.unwrap_or(DEFAULT_LLVM_MAJOR)
    }

    /// rustc, cargo and core for the BPF target are there (linker aside).
    pub fn debian_base(&self) -> bool {
        self.deb_rustc && self.deb_cargo && self.deb_core && self.deb_llvm_major.is_some()
    }

    /// The linker runs against the same LLVM as Debian's rustc (or is static,
    /// which we cannot check and accept).
    pub fn debian_linker_ok(&self) -> bool {
        self.linker.is_some()
            && self
                .linker_llvm
                .is_none_or(|m| Some(m) == self.deb_llvm_major)
    }

    fn debian(&self) -> Option<Route> {
        (self.debian_base() && self.debian_linker_ok()).then(|| Route::Debian {
            llvm_major: self.llvm_major(),
            linker: self.linker.clone().expect("checked"),
        })
    }

    pub fn rustup_base(&self) -> bool {
        self.rustup.is_some() && self.nightly.is_some() && self.nightly_rust_src
    }

    fn rustup_route(&self) -> Option<Route> {
        if !self.rustup_base() {
            return None;
        }
        Some(Route::Rustup {
            rustup: self.rustup.clone()?,
            toolchain: self.nightly.clone()?,
            linker: self.linker.clone()?,
        })
    }

    pub fn debian_missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if !self.deb_rustc {
            m.push(format!("{DEBIAN_RUSTC} (package rustc-web)"));
        }
        if !self.deb_cargo {
            m.push(format!("{DEBIAN_CARGO} (package cargo-web)"));
        }
        if self.deb_rustc && !self.deb_core {
            m.push(format!(
                "core for {BPF_TARGET} (package libstd-rust-web-dev-bpf)"
            ));
        }
        match (&self.linker, self.linker_llvm) {
            (None, _) => m.push("bpf-linker".into()),
            (Some(l), Some(have)) if Some(have) != self.deb_llvm_major => m.push(format!(
                "bpf-linker built against LLVM {} ({} uses LLVM {have})",
                self.llvm_major(),
                l.display()
            )),
            _ => {}
        }
        m
    }

    pub fn rustup_missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if self.rustup.is_none() {
            m.push("rustup".into());
        } else if self.nightly.is_none() {
            m.push("a nightly toolchain".into());
        } else if !self.nightly_rust_src {
            m.push("the rust-src component of nightly".into());
        }
        if self.linker.is_none() {
            m.push("bpf-linker".into());
        }
        m
    }

    /// What each route `choice` allows lacks, one line per route.
    pub fn missing(&self, choice: RouteChoice) -> String {
        let mut lines = Vec::new();
        if choice.wants_debian() {
            lines.push(format!(
                "route debian lacks: {}",
                self.debian_missing().join(", ")
            ));
        }
        if choice.wants_rustup() {
            lines.push(format!(
                "route rustup lacks: {}",
                self.rustup_missing().join(", ")
            ));
        }
        lines.join("\n")
    }
}

/// Remove what cargo set for the process that runs this (`cargo run` for
/// xtask, a build for a build script), and build-steering variables
/// inherited from the caller, so that an inner cargo of another toolchain,
/// another workspace and another target is not confused by them.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if strip_var(k) {
            cmd.env_remove(&key);
        }
    }
}

fn strip_var(k: &str) -> bool {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_BUILD_JOBS",
        // The jobserver of the cargo that runs a build script: the inner
        // build then takes its share of the outer build's jobs.
        "CARGO_MAKEFLAGS",
    ];
    const STRIP: &[&str] = &[
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUST_RECURSION_COUNT",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_BOOTSTRAP",
        "RUSTC_LINKER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "LD_LIBRARY_PATH",
        // What cargo gives a build script about its own build.
        "OUT_DIR",
        "TARGET",
        "HOST",
        "NUM_JOBS",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
    ];
    if STRIP.contains(&k) || k.starts_with("__CARGO") {
        return true;
    }
    k.starts_with("CARGO_") && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p))
}

pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `BPF_LINKER` if set, else `bpf-linker` in cargo's bin directory or on
/// PATH. A `BPF_LINKER` that is not a file counts as no linker.
pub fn find_linker() -> Option<PathBuf> {
    if let Some(p) = env::var_os("BPF_LINKER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(home) = cargo_home() {
        let l = home.join("bin").join("bpf-linker");
        if l.is_file() {
            return Some(l);
        }
    }
    find_in_path("bpf-linker")
}

fn find_rustup() -> Option<PathBuf> {
    find_in_path("rustup").or_else(|| {
        let r = cargo_home()?.join("bin").join("rustup");
        r.is_file().then_some(r)
    })
}

/// The standard output of `cmd`, if it ran and succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debian_core_present() -> bool {
    let mut cmd = Command::new(DEBIAN_RUSTC);
    clean_env(&mut cmd);
    cmd.args(["--print", "target-libdir", "--target", BPF_TARGET]);
    let Some(dir) = output(&mut cmd) else {
        return false;
    };
    let Ok(entries) = fs::read_dir(dir.trim()) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libcore-") && name.ends_with(".rlib")
    })
}

fn rustc_llvm_major(rustc: &str) -> Option<u32> {
    let mut cmd = Command::new(rustc);
    clean_env(&mut cmd);
    cmd.arg("-vV");
    let out = output(&mut cmd)?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    version.split('.').next()?.parse().ok()
}

fn rustup_nightly(rustup: &Path) -> Option<String> {
    let mut cmd = Command::new(rustup);
    clean_env(&mut cmd);
    cmd.args(["toolchain", "list"]);
    let out = output(&mut cmd)?;
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| t.starts_with("nightly"))
        .map(str::to_owned)
}

fn rustup_has_rust_src(rustup: &Path, toolchain: &str) -> bool {
    let mut cmd = Command::new(rustup);
    clean_env(&mut cmd);
    cmd.args(["component", "list", "--installed", "--toolchain", toolchain]);
    output(&mut cmd).is_some_and(|out| out.lines().any(|l| l.trim() == "rust-src"))
}

/// `ldd bpf-linker` → the N of `libLLVM.so.N` / `libLLVM-N.so`, if dynamic.
fn linked_llvm_major(linker: &Path) -> Option<u32> {
    let out = output(Command::new("ldd").arg(linker))?;
    out.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_what_cargo_sets() {
        for k in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_TARGET_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_CFG_TARGET_ARCH",
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "OUT_DIR",
            "TARGET",
            "PROFILE",
        ] {
            assert!(strip_var(k), "{k}");
        }
        for k in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_MAKEFLAGS",
            "PATH",
            "HOME",
            "RUSTUP_HOME",
        ] {
            assert!(!strip_var(k), "{k}");
        }
    }

    #[test]
    fn route_names() {
        for c in [RouteChoice::Auto, RouteChoice::Debian, RouteChoice::Rustup] {
            assert_eq!(c.name().parse::<RouteChoice>(), Ok(c));
        }
        let err = "nightly".parse::<RouteChoice>().unwrap_err();
        assert!(err.contains("auto, debian or rustup"), "{err}");
    }

    #[test]
    fn an_empty_machine_lacks_everything() {
        let p = Probe::default();
        assert!(p.route(RouteChoice::Auto).is_none());
        let m = p.missing(RouteChoice::Auto);
        assert!(m.contains("package rustc-web"), "{m}");
        assert!(m.contains("route rustup lacks: rustup, bpf-linker"), "{m}");
        assert!(!p.missing(RouteChoice::Debian).contains("rustup"));
    }

    #[test]
    fn a_linker_on_another_llvm_does_not_make_a_debian_route() {
        let p = Probe {
            deb_rustc: true,
            deb_cargo: true,
            deb_core: true,
            deb_llvm_major: Some(22),
            linker: Some(PathBuf::from("/x/bpf-linker")),
            linker_llvm: Some(21),
            ..Probe::default()
        };
        assert!(p.route(RouteChoice::Debian).is_none());
        assert!(
            p.missing(RouteChoice::Debian)
                .contains("bpf-linker built against LLVM 22 (/x/bpf-linker uses LLVM 21)")
        );
        let ok = Probe {
            linker_llvm: Some(22),
            ..p
        };
        assert!(matches!(
            ok.route(RouteChoice::Auto),
            Some(Route::Debian { llvm_major: 22, .. })
        ));
    }
}
