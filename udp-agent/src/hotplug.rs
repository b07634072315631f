//! Interfaces that go away and come back.
//!
//! An XDP attachment belongs to one interface index. When the interface is
//! deleted (a veth torn down, an ENI detached, a driver reloaded) the kernel
//! drops the program with it; an interface created later under the same
//! name has a new index and no program. The agent keeps running through
//! that: [`Watcher::poll`], called every [`POLL_INTERVAL`] by `run`, looks
//! each `--iface` up by name and
//!
//! * gone: warns, forgets the attachment, and reports it detached
//!   (`udp_agent_xdp_attached{…} 0`);
//! * back, or re-created under a new index: attaches again with the same
//!   `--xdp-mode` policy and says so;
//! * present but refusing the program: retries with a doubling delay (up to
//!   a minute), warning once per interface index.
//!
//! Polling by name costs one `if_nametoindex` per interface a second and
//! needs no netlink subscription (nor its failure modes); a second is well
//! inside the time an interface takes to come up. Events need no help to
//! carry the new interface's name: the encoder names an unknown index when
//! it first sees it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::Ebpf;
use tracing::{debug, info, warn};

use crate::loader::{self, Attached, Attachment, LoadError, ModeArg};

/// How often interfaces are looked up.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between attempts to attach to an interface that refuses.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// What metrics show about one `--iface`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceState {
    pub name: String,
    /// Its index while attached.
    pub ifindex: Option<u32>,
    /// The mode it is attached in; `None` while it is not.
    pub mode: Option<Attached>,
    /// The mode of the last attachment, if there was one.
    pub last_mode: Option<Attached>,
    /// Attachments after the first (the interface came back).
    pub reattached: u64,
}

impl IfaceState {
    pub fn attached(name: &str, ifindex: u32, mode: Attached) -> Self {
        Self {
            name: name.to_owned(),
            ifindex: Some(ifindex),
            mode: Some(mode),
            last_mode: Some(mode),
            reattached: 0,
        }
    }
}

/// The interface table, shared between the watcher (writer) and metrics.
#[derive(Debug, Default)]
pub struct InterfaceStatus(Mutex<Vec<IfaceState>>);

impl InterfaceStatus {
    pub fn snapshot(&self) -> Vec<IfaceState> {
        self.0.lock().expect("interface status lock").clone()
    }

    pub fn set(&self, states: Vec<IfaceState>) {
        *self.0.lock().expect("interface status lock") = states;
    }
}

/// A refused attach, waiting to be tried again.
#[derive(Debug)]
struct Retry {
    ifindex: u32,
    at: Instant,
    delay: Duration,
}

/// One `--iface`.
#[derive(Debug)]
struct Slot {
    name: String,
    attachment: Option<Attachment>,
    last_mode: Option<Attached>,
    attached_before: bool,
    reattached: u64,
    retry: Option<Retry>,
}

impl Slot {
    fn state(&self) -> IfaceState {
        IfaceState {
            name: self.name.clone(),
            ifindex: self.attachment.as_ref().map(|a| a.ifindex),
            mode: self.attachment.as_ref().map(|a| a.mode),
            last_mode: self.last_mode,
            reattached: self.reattached,
        }
    }
}

/// Keeps the program attached to every `--iface` that exists.
#[derive(Debug)]
pub struct Watcher {
    mode: ModeArg,
    slots: Vec<Slot>,
    status: Arc<InterfaceStatus>,
}

impl Watcher {
    /// A watcher for `names` (duplicates ignored), nothing attached yet.
    pub fn new(names: &[String], mode: ModeArg, status: Arc<InterfaceStatus>) -> Self {
        let mut slots: Vec<Slot> = Vec::with_capacity(names.len());
        for name in names {
            if slots.iter().any(|s| s.name == *name) {
                continue;
            }
            slots.push(Slot {
                name: name.clone(),
                attachment: None,
                last_mode: None,
                attached_before: false,
                reattached: 0,
                retry: None,
            });
        }
        let w = Self {
            mode,
            slots,
            status,
        };
        w.publish();
        w
    }

    /// Attaches to every interface, at start-up. An interface that does not
    /// exist is an error unless `wait` (then [`poll`](Self::poll) attaches
    /// it when it appears); an attach that fails is an error, after
    /// detaching what was attached. Returns the `(ifindex, name)` pairs
    /// attached.
    pub fn start(&mut self, ebpf: &mut Ebpf, wait: bool) -> Result<Vec<(u32, String)>, LoadError> {
        let mut attached = Vec::new();
        for i in 0..self.slots.len() {
            let name = self.slots[i].name.clone();
            match loader::ifindex(&name) {
                Err(_) if wait => {
                    warn!(
                        iface = name,
                        "interface does not exist (yet); attaching when it appears (--wait-for-iface)"
                    );
                    continue;
                }
                Err(e) => {
                    self.detach_all(ebpf);
                    return Err(e);
                }
                Ok(_) => {}
            }
            match loader::attach(ebpf, &name, self.mode) {
                Ok(a) => {
                    attached.push((a.ifindex, name));
                    self.slots[i].attached(a);
                }
                Err(e) => {
                    self.detach_all(ebpf);
                    return Err(e);
                }
            }
        }
        self.publish();
        Ok(attached)
    }

    /// One look at every interface (see the module documentation).
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        let mode = self.mode;
        let mut changed = false;
        for slot in &mut self.slots {
            let now = loader::ifindex(&slot.name).ok();
            if let Some(a) = &slot.attachment {
                if now == Some(a.ifindex) {
                    continue;
                }
                match now {
                    None => warn!(
                        iface = slot.name,
                        ifindex = a.ifindex,
                        "interface went away: detached; attaching again when it is back"
                    ),
                    Some(new) => warn!(
                        iface = slot.name,
                        old_ifindex = a.ifindex,
                        ifindex = new,
                        "interface was re-created under a new index: attaching again"
                    ),
                }
                let a = slot.attachment.take().expect("checked above");
                loader::forget(ebpf, a);
                slot.retry = None;
                changed = true;
            }
            let Some(ifindex) = now else { continue };
            if let Some(r) = &slot.retry
                && r.ifindex == ifindex
                && Instant::now() < r.at
            {
                continue;
            }
            changed = true;
            match loader::attach(ebpf, &slot.name, mode) {
                Ok(a) => {
                    if slot.attached_before {
                        info!(
                            iface = slot.name,
                            ifindex = a.ifindex,
                            mode = %a.mode,
                            "interface is back: attached again"
                        );
                        slot.reattached += 1;
                    } else {
                        info!(iface = slot.name, ifindex = a.ifindex, mode = %a.mode, "interface appeared: attached");
                    }
                    slot.attached(a);
                }
                Err(e) => {
                    let first = slot.retry.as_ref().is_none_or(|r| r.ifindex != ifindex);
                    let delay = match &slot.retry {
                        Some(r) if !first => (r.delay * 2).min(MAX_RETRY_DELAY),
                        _ => POLL_INTERVAL,
                    };
                    if first {
                        warn!(
                            iface = slot.name,
                            ifindex,
                            error = %crate::logging::error_chain(&e),
                            "attaching to the interface failed; retrying with a growing delay (up to a minute)"
                        );
                    } else {
                        debug!(iface = slot.name, ifindex, error = %crate::logging::error_chain(&e), "attach retry failed");
                    }
                    slot.retry = Some(Retry {
                        ifindex,
                        at: Instant::now() + delay,
                        delay,
                    });
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// Detaches from every interface (shutdown, or a failed start).
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        for slot in &mut self.slots {
            if let Some(a) = slot.attachment.take() {
                // An interface that vanished since the last poll has lost the
                // program already.
                if loader::ifindex(&a.iface).ok() == Some(a.ifindex) {
                    loader::detach(ebpf, a);
                } else {
                    loader::forget(ebpf, a);
                }
            }
        }
        self.publish();
    }

    /// Names of the interfaces attached now.
    pub fn attached(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.attachment.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    fn publish(&self) {
        self.status
            .set(self.slots.iter().map(Slot::state).collect());
    }
}

impl Slot {
    fn attached(&mut self, a: Attachment) {
        self.last_mode = Some(a.mode);
        self.attachment = Some(a);
        self.attached_before = true;
        self.retry = None;
    }
}
