//! What the agent needs from the kernel before it tries anything.

use std::fs;

/// Capability numbers from `linux/capability.h`.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in
/// /proc/self/status), or `None` if it cannot be read.
pub fn effective() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Checks that loading and attaching XDP can work: CAP_SYS_ADMIN (root), or
/// CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON. Returns a message naming what is
/// missing and what to do.
pub fn check_run() -> Result<(), String> {
    let Some(caps) = effective() else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    if has(caps, CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(caps, *cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "udp-agent needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, to load and attach its XDP program; missing: {}. Run it with sudo, or grant them (e.g. systemd AmbientCapabilities=)",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_capabilities() {
        assert!(effective().is_some());
    }

    #[test]
    fn bit_arithmetic() {
        let caps = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN);
        assert!(has(caps, CAP_BPF));
        assert!(!has(caps, CAP_PERFMON));
    }
}
