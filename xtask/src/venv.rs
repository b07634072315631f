//! The Python virtualenv for the network test ring (moto's server as the
//! EventBridge/SQS endpoint), pinned by `xtask/requirements.txt`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::run_checked;

/// Make `<root>/target/venv` hold exactly `xtask/requirements.txt`; returns
/// the venv directory (its interpreter is `bin/python`).
///
/// Fast when nothing changed: a stamp file records the requirements and the
/// base interpreter the venv was made from; any difference re-creates it.
/// The base interpreter is `$UDP_AGENT_PYTHON3`, else `python3` on PATH.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let requirements = root.join("xtask").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let venv = root.join("target").join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".xtask-stamp");

    let base = env::var_os("UDP_AGENT_PYTHON3").unwrap_or_else(|| "python3".into());
    let base_id = Command::new(&base)
        .args([
            "-c",
            "import sys; print(sys.executable, sys.version.split()[0])",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .with_context(|| {
            format!(
                "`{}` does not run; install Python 3 with the venv module \
                 (Debian: apt-get install -y python3-venv) or point UDP_AGENT_PYTHON3 at one",
                base.to_string_lossy()
            )
        })?;
    let expected = format!("base: {base_id}\n{wanted}");

    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == expected) {
        return Ok(venv);
    }

    println!("venv: creating {} from {base_id}", venv.display());
    let _ = fs::remove_file(&stamp);
    run_checked(
        Command::new(&base)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .with_context(|| {
        format!(
            "`python3 -m venv {}` failed; install the venv module \
             (Debian: apt-get install -y python3-venv)",
            venv.display()
        )
    })?;
    run_checked(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                "-r",
            ])
            .arg(&requirements),
    )
    .with_context(|| {
        format!(
            "pip could not install {} into {}; check network access to PyPI",
            requirements.display(),
            venv.display()
        )
    })?;
    fs::write(&stamp, &expected).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(venv)
}
