//! What udp-agent's integration tests (`udp-agent/tests/`) and its
//! benchmark (`udp-bench`) share to put the agent on a network and watch
//! what it does.
//!
//! * [`netns`]: [`VethNs`], a network namespace joined to the root
//!   namespace by a veth pair, on a subnet of 198.18.0.0/15 and fd00::/8
//!   that a flocked slot reserves, with no default route; removed on drop,
//!   also when the test panics. [`VethNs::in_ns`] runs a closure on a
//!   thread inside the namespace; [`VethNs::send_udp`] and
//!   [`VethNs::send_frames`] are bounded senders built on it.
//! * [`socket`]: the senders' sockets: UDP with path-MTU discovery set,
//!   and `AF_PACKET` for whole Ethernet frames ([`RawSocket`]).
//! * [`frame`]: the Ethernet frame builder (udp-ebpf-common's; its host
//!   parser tests use it too).
//! * [`process`]: child processes whose output is collected line by line,
//!   stopped with a signal and reaped with their resource usage, stopped
//!   on drop; the interrupt flag of a process that must unwind through its
//!   guards.
//! * [`agent`]: the `udp-agent` binary under test: the skip rule
//!   ([`privileged`]), its command with a clean environment, a running
//!   agent ([`Agent`]: stopped and its pins removed on drop).
//! * [`event`]: one stdout line of the agent, parsed as a user reads it.
//! * [`control`]: `udp-agent ports`/`stats` against a running agent.
//! * [`metrics`]: the agent's `/metrics`, scraped.
//! * [`host`]: a small disk to fill ([`Tmpfs`]), and the calling thread's
//!   CPU clock for the benchmarks and speed examples.
//! * [`payloads`]: the syslog, JSON and binary payloads the format
//!   benchmarks share.
//!
//! Nothing here sleeps for correctness: every wait polls a condition with a
//! deadline and panics (or errs) with what it observed when it passes.

pub mod agent;
pub mod control;
pub mod event;
pub mod host;
pub mod metrics;
pub mod netns;
pub mod payloads;
pub mod process;
pub mod socket;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

pub use agent::{Agent, Stopped, agent_command, exit_signal, is_root, pin_dir, privileged};
pub use control::{counter, ctl, ctl_ok, ports_list, stats, wait_counter};
pub use event::{Event, Expected, assert_event, event_diff, payload_of};
pub use host::{Tmpfs, thread_cpu_ns};
pub use netns::VethNs;
pub use process::counters_line;
pub use socket::{RawSocket, bind_udp};
pub use udp_ebpf_common::frame;

/// How long a test waits for something that should happen promptly (an
/// event, a counter) before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Distinguishes the names and pin directories of one process's tests.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<pid>-<n>`, unique among the tests of this process.
pub fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` and the last observation `describe` gives.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; observed: {}",
                describe()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `len` bytes of a pattern that differs for every `seed` (so a payload
/// delivered under the wrong datagram's header cannot pass for the right one).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (x >> 13) as u8 ^ (i as u8)
        })
        .collect()
}
