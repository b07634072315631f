//! Finding (and, where we can, installing) a toolchain that builds the XDP
//! program for `bpfel-unknown-none`, and building it.
//!
//! Two routes:
//!
//! * **debian** — Debian's `rustc-web`/`cargo-web` (`/usr/bin/rustc`,
//!   `/usr/bin/cargo`) with the prebuilt `core` for `bpfel-unknown-none` from
//!   `libstd-rust-web-dev-bpf`, and a `bpf-linker` built against the same LLVM
//!   major version as that rustc (`llvm-N-dev`).
//! * **rustup** — a rustup nightly with `rust-src`, building `core` itself
//!   (`-Z build-std=core`), and a `bpf-linker`.

use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{describe, is_root, run_checked};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// LLVM major version of Debian's `rustc-web`, used before rustc is installed
/// (afterwards the version rustc reports wins).
const DEFAULT_LLVM_MAJOR: u32 = 22;
/// BTF for aya's map/program loading; BPF ISA v3 for the atomic
/// compare-and-swap the rate limiters use (kernel >= 5.12).
const RUSTFLAGS: &str = "-Cdebuginfo=2 -Clink-arg=--btf -Ctarget-cpu=v3";

/// Which route the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteChoice {
    /// debian if complete, else rustup nightly if complete, else install debian (root only)
    Auto,
    /// Debian packages rustc-web/cargo-web/libstd-rust-web-dev-bpf + bpf-linker on LLVM 22
    Debian,
    /// rustup nightly with rust-src, `-Z build-std=core`
    Rustup,
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
    fn linker(&self) -> &Path {
        match self {
            Route::Debian { linker, .. } | Route::Rustup { linker, .. } => linker,
        }
    }
}

/// What the machine has, as far as the two routes are concerned.
#[derive(Debug, Default)]
struct Probe {
    // debian route
    deb_rustc: bool,
    deb_cargo: bool,
    deb_core: bool,
    deb_llvm_major: Option<u32>,
    // rustup route
    rustup: Option<PathBuf>,
    nightly: Option<String>,
    nightly_rust_src: bool,
    // shared
    linker: Option<PathBuf>,
    /// The `libLLVM.so.N` the linker is dynamically linked against, if any.
    linker_llvm: Option<u32>,
    apt_get: bool,
}

impl Probe {
    fn run() -> Probe {
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

    fn llvm_major(&self) -> u32 {
        self.deb_llvm_major.unwrap_or(DEFAULT_LLVM_MAJOR)
    }

    /// rustc, cargo and core for the BPF target are there (linker aside).
    fn debian_base(&self) -> bool {
        self.deb_rustc && self.deb_cargo && self.deb_core && self.deb_llvm_major.is_some()
    }

    /// The linker runs against the same LLVM as Debian's rustc (or is static,
    /// which we cannot check and accept).
    fn debian_linker_ok(&self) -> bool {
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

    fn rustup_base(&self) -> bool {
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

    fn debian_missing(&self) -> Vec<String> {
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

    fn rustup_missing(&self) -> Vec<String> {
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
}

/// Find a complete route, installing what is missing when that is safe and
/// possible; otherwise fail with the exact commands to run.
pub fn ensure(choice: RouteChoice) -> Result<Route> {
    let probe = Probe::run();
    let found = match choice {
        RouteChoice::Auto => probe.debian().or_else(|| probe.rustup_route()),
        RouteChoice::Debian => probe.debian(),
        RouteChoice::Rustup => probe.rustup_route(),
    };
    if let Some(route) = found {
        return Ok(route);
    }

    let want_debian = choice != RouteChoice::Rustup;
    let want_rustup = choice != RouteChoice::Debian;

    // Only bpf-linker is missing: installing it needs no root.
    if want_debian && probe.debian_base() {
        install_linker_debian(&probe)?;
        return recheck(choice);
    }
    if want_rustup && probe.rustup_base() && probe.linker.is_none() {
        install_linker_rustup(&probe)?;
        return recheck(choice);
    }
    // Nothing usable: as root with apt-get, install the debian route.
    if want_debian && is_root() && probe.apt_get {
        install_debian_packages(&probe)?;
        let probe = Probe::run();
        if probe.debian_base() && !probe.debian_linker_ok() {
            install_linker_debian(&probe)?;
        }
        return recheck(choice);
    }

    bail!("{}", instructions(&probe, want_debian, want_rustup))
}

fn recheck(choice: RouteChoice) -> Result<Route> {
    let probe = Probe::run();
    let found = match choice {
        RouteChoice::Auto => probe.debian().or_else(|| probe.rustup_route()),
        RouteChoice::Debian => probe.debian(),
        RouteChoice::Rustup => probe.rustup_route(),
    };
    match found {
        Some(route) => Ok(route),
        None => bail!(
            "installation finished but the toolchain is still incomplete.\n{}",
            instructions(
                &probe,
                choice != RouteChoice::Rustup,
                choice != RouteChoice::Debian
            )
        ),
    }
}

fn instructions(probe: &Probe, debian: bool, rustup: bool) -> String {
    let major = probe.llvm_major();
    let sudo = if is_root() { "" } else { "sudo " };
    let mut s =
        String::from("no complete toolchain for the eBPF build (target bpfel-unknown-none).\n");
    if debian {
        s += &format!(
            "\nRoute debian (Debian 12 packages) — missing: {}\n",
            probe.debian_missing().join(", ")
        );
        let llvm_dev = Path::new(&format!("/usr/lib/llvm-{major}/bin/llvm-config")).is_file();
        if !probe.debian_base() || !llvm_dev {
            s += &format!(
                "    {sudo}apt-get update\n\
                 \x20   {sudo}apt-get install -y rustc-web cargo-web libstd-rust-web-dev-bpf llvm-{major}-dev\n"
            );
        }
        if !probe.debian_linker_ok() {
            let force = if probe.linker.is_some() {
                " --force"
            } else {
                ""
            };
            s += &format!(
                "    PATH=/usr/lib/llvm-{major}/bin:$PATH cargo install bpf-linker --no-default-features --features llvm-{major}{force}\n"
            );
        }
        if !is_root() && probe.apt_get {
            s += "    (run `sudo cargo xtask setup` and xtask does all of this itself)\n";
        }
    }
    if rustup {
        s += &format!(
            "\nRoute rustup (nightly) — missing: {}\n",
            probe.rustup_missing().join(", ")
        );
        if probe.rustup.is_none() {
            s += "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh\n";
        }
        if !probe.rustup_base() {
            s += "    rustup toolchain install nightly --component rust-src\n";
        }
        if probe.linker.is_none() {
            s += "    cargo install bpf-linker\n";
        }
    }
    s += "\nthen run `cargo xtask setup` again.";
    s
}

fn install_debian_packages(probe: &Probe) -> Result<()> {
    let major = probe.llvm_major();
    println!("setup: installing the debian route with apt-get (running as root)");
    let mut update = Command::new("apt-get");
    update.arg("update");
    run_checked(&mut update)
        .context("apt-get update failed; check the network and the apt sources")?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"])
        .arg(format!("llvm-{major}-dev"));
    run_checked(&mut install).with_context(|| {
        format!(
            "apt-get install failed; the debian route needs Debian 12 with bookworm-updates/security \
             (rustc-web 1.96, llvm-{major}-dev). Otherwise use the rustup route: \
             `rustup toolchain install nightly --component rust-src && cargo install bpf-linker`"
        )
    })
}

fn install_linker_debian(probe: &Probe) -> Result<()> {
    let major = probe.llvm_major();
    let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{major}/bin"));
    if !llvm_bin.join("llvm-config").is_file() {
        if is_root() && probe.apt_get {
            let mut install = Command::new("apt-get");
            install
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .arg(format!("llvm-{major}-dev"));
            run_checked(&mut install)
                .with_context(|| format!("apt-get install llvm-{major}-dev failed"))?;
        } else {
            bail!(
                "bpf-linker must be built against LLVM {major}, but {} is missing.\n\
                 run: sudo apt-get install -y llvm-{major}-dev\n\
                 then run `cargo xtask setup` again.",
                llvm_bin.join("llvm-config").display()
            );
        }
    }
    println!("setup: building bpf-linker against LLVM {major} (takes a few minutes, once)");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![llvm_bin];
    paths.extend(env::split_paths(&path));
    let mut cmd = Command::new(host_cargo());
    clean_env(&mut cmd);
    cmd.env("PATH", env::join_paths(paths)?)
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"));
    if probe.linker.is_some() {
        // A bpf-linker on another LLVM is in the way.
        cmd.arg("--force");
    }
    run_checked(&mut cmd).with_context(|| {
        format!(
            "building bpf-linker failed. Try by hand:\n    \
             PATH=/usr/lib/llvm-{major}/bin:$PATH cargo install bpf-linker --no-default-features --features llvm-{major}"
        )
    })
}

fn install_linker_rustup(_probe: &Probe) -> Result<()> {
    println!("setup: installing bpf-linker (takes a few minutes, once)");
    let mut cmd = Command::new(host_cargo());
    clean_env(&mut cmd);
    cmd.args(["install", "bpf-linker"]);
    run_checked(&mut cmd)
        .context("installing bpf-linker failed. Try by hand: cargo install bpf-linker")
}

/// Build the XDP program; returns the absolute path of the object.
pub fn build_ebpf(root: &Path, route: &Route) -> Result<PathBuf> {
    let target_dir = root.join("target").join("bpf");
    let crate_dir = root.join("udp-ebpf");
    let mut cmd = match route {
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
    cmd.current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", route.linker())
        .env("RUSTFLAGS", RUSTFLAGS);
    run_checked(&mut cmd).context(
        "building the eBPF program (udp-ebpf) failed; see the compiler output above. \
         `cargo xtask setup` shows which toolchain was used",
    )?;
    let object = target_dir.join(BPF_TARGET).join("release").join("udp-ebpf");
    let meta = fs::metadata(&object).with_context(|| {
        format!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        )
    })?;
    println!("ebpf: {} ({} bytes)", object.display(), meta.len());
    Ok(object)
}

/// Remove what `cargo run` set for xtask itself (and build-steering variables
/// inherited from the caller) so an inner cargo of another toolchain, another
/// workspace or another target is not confused by them.
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
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "LD_LIBRARY_PATH",
    ];
    if STRIP.contains(&k) || k.starts_with("__CARGO") {
        return true;
    }
    k.starts_with("CARGO_") && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// The cargo to use for `cargo install`: rustup's proxy or the one on PATH.
fn host_cargo() -> PathBuf {
    if let Some(home) = cargo_home() {
        let c = home.join("bin").join("cargo");
        if c.is_file() {
            return c;
        }
    }
    find_in_path("cargo").unwrap_or_else(|| PathBuf::from(DEBIAN_CARGO))
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_linker() -> Option<PathBuf> {
    if let Some(p) = env::var_os("BPF_LINKER") {
        return Some(PathBuf::from(p));
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

fn output(cmd: &mut Command) -> Option<String> {
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

/// One line per fact, for `cargo xtask setup`.
pub fn report(route: &Route) {
    println!("setup: route {route}");
    let (program, args): (&OsStr, Vec<&str>) = match route {
        Route::Debian { .. } => (OsStr::new(DEBIAN_RUSTC), vec!["--version"]),
        Route::Rustup {
            rustup, toolchain, ..
        } => (
            rustup.as_os_str(),
            vec!["run", toolchain, "rustc", "--version"],
        ),
    };
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd.args(args);
    if let Some(v) = output(&mut cmd) {
        println!("setup: {}", v.trim());
    } else {
        println!("setup: warning: `{}` failed", describe(&cmd));
    }
    let mut cmd = Command::new(route.linker());
    cmd.arg("--version");
    if let Some(v) = output(&mut cmd) {
        println!("setup: {}", v.trim());
    }
}

#[cfg(test)]
mod tests {
    use super::strip_var;

    #[test]
    fn strips_what_cargo_run_sets() {
        for k in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_TARGET_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTFLAGS",
        ] {
            assert!(strip_var(k), "{k}");
        }
        for k in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "PATH",
            "HOME",
            "RUSTUP_HOME",
        ] {
            assert!(!strip_var(k), "{k}");
        }
    }
}
