//! Finding (and, where we can, installing) a toolchain that builds the XDP
//! program for `bpfel-unknown-none`, and building it. What a route is and
//! how the machine is probed lives in `udp-ebpf-build`, which udp-agent's
//! build.rs uses too; here is what only `cargo xtask` does: install what is
//! missing, or say how.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
pub use udp_ebpf_build::Route;
use udp_ebpf_build::{
    DEBIAN_CARGO, DEBIAN_RUSTC, Probe, cargo_home, clean_env, find_in_path, object_path, output,
    target_dir,
};

use crate::{describe, is_root, run_checked};

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

impl From<RouteChoice> for udp_ebpf_build::RouteChoice {
    fn from(c: RouteChoice) -> Self {
        match c {
            RouteChoice::Auto => Self::Auto,
            RouteChoice::Debian => Self::Debian,
            RouteChoice::Rustup => Self::Rustup,
        }
    }
}

impl RouteChoice {
    /// The value of `UDP_EBPF_ROUTE` for cargo commands, so that the
    /// agent's build.rs uses the route this xtask run was asked for.
    pub fn env(self) -> (&'static str, &'static str) {
        (
            udp_ebpf_build::ROUTE_ENV,
            udp_ebpf_build::RouteChoice::from(self).name(),
        )
    }
}

/// Find a complete route, installing what is missing when that is safe and
/// possible; otherwise fail with the exact commands to run.
pub fn ensure(choice: RouteChoice) -> Result<Route> {
    let probe = Probe::run();
    let found = probe.route(choice.into());
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
    let found = probe.route(choice.into());
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
    build_object(
        route.build_command(root, &target_dir(root)),
        &target_dir(root),
    )
}

/// The object built without its `kernel-log` feature, for the bench row of
/// what the log costs when off. It has a target directory of its own
/// (`bpf-no-log` beside `bpf`), so it never replaces the agent's object.
pub fn build_ebpf_without_log(root: &Path, route: &Route) -> Result<PathBuf> {
    let dir = target_dir(root).with_file_name("bpf-no-log");
    let mut cmd = route.build_command(root, &dir);
    cmd.arg("--no-default-features");
    build_object(cmd, &dir)
}

fn build_object(mut cmd: Command, target_dir: &Path) -> Result<PathBuf> {
    run_checked(&mut cmd).context(
        "building the eBPF program (udp-ebpf) failed; see the compiler output above. \
         `cargo xtask setup` shows which toolchain was used",
    )?;
    let object = object_path(target_dir);
    let meta = fs::metadata(&object).with_context(|| {
        format!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        )
    })?;
    println!("ebpf: {} ({} bytes)", object.display(), meta.len());
    Ok(object)
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
