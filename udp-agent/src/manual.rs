//! The manual pages and shell completions, generated from the command line
//! definition ([`crate::config`]) so they never disagree with `--help`.
//! `cargo xtask package` runs `udp-agent manpages DIR` and
//! `udp-agent completions SHELL` on the binary it packages.

use std::{fs, io, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::config::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn io::Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "udp-agent", out);
}

/// Writes `udp-agent.1` and one page per subcommand (`udp-agent-run.1`, …)
/// into `dir`, creating it if needed. Returns the files written.
pub fn man_pages(dir: &Path) -> io::Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    let before: Vec<_> = list(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    let mut written: Vec<String> = list(dir)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    written.sort();
    Ok(written)
}

fn list(dir: &Path) -> io::Result<Vec<String>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        for want in [
            "udp-agent.1",
            "udp-agent-run.1",
            "udp-agent-ports.1",
            "udp-agent-completions.1",
        ] {
            assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
        }
        assert!(
            !pages.iter().any(|p| p.contains("manpages")),
            "the hidden command has no page: {pages:?}"
        );
        let run = fs::read_to_string(dir.path().join("udp-agent-run.1")).unwrap();
        // The flags and their variables, as --help shows them.
        assert!(run.contains("health\\-addr"), "{run}");
        assert!(run.contains("UDP_AGENT_HEALTH_ADDR"), "{run}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("udp-agent"), "{text}");
        assert!(text.contains("--metrics-addr"), "{text}");
        assert!(text.contains("ports"), "{text}");
    }
}
