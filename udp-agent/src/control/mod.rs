//! Runtime control through maps pinned in bpffs.
//!
//! `udp-agent run` pins ten maps under its pin directory ([`pins`]): the
//! port rules and state, the global settings, the counters, the per-source
//! table, the four allow/deny lists and the per-CPU captured counts. Any
//! other process with the right privileges (`udp-agent ports`,
//! `udp-agent stats`, bpftool) opens those pins and reads or writes the
//! very maps the running XDP program uses ([`Control`]): a port change
//! applies to the next packet, without a restart, and nothing in flight is
//! lost.

mod pins;

use std::{
    collections::BTreeSet,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;
use udp_ebpf_common::{
    CONFIG_ALLOWLIST, CONFIG_DENYLIST, CONFIG_REJECT_DROP, Config, Encoding, Limit, MAX_PREFIXES,
    PORT_COUNT, PortRule, PortState, SourceKey, SourceState, counter,
};

pub use self::pins::*;
use crate::ports::PortRange;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(
        "no running udp-agent at {0}: start one with `udp-agent run` (or pass the same --pin-dir it uses)"
    )]
    NotRunning(PathBuf),
    #[error(
        "another udp-agent (pid {pid}) is running with pin directory {dir}; stop it or pass a different --pin-dir"
    )]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Map {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "{0} is not on a BPF filesystem and mounting one there failed: {1} (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpfFs(PathBuf, io::Error),
    #[error("--pin-dir {0} must be an absolute path under a bpffs mount")]
    NotAbsolute(PathBuf),
    #[error("{path} {why}: whoever can write there can swap the agent's pins for their own. {fix}")]
    Unsafe {
        path: PathBuf,
        why: String,
        fix: &'static str,
    },
    #[error(
        "the {list} list holds at most {limit} {family} prefixes: it has {present} and this adds {adding} more, so nothing was changed (merge neighbouring prefixes into shorter ones, or remove some with `udp-agent sources remove`)"
    )]
    ListFull {
        list: &'static str,
        family: &'static str,
        limit: u32,
        present: usize,
        adding: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `pass` or `drop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Hand the packet on to the host's network stack.
    #[default]
    Pass,
    /// Consume it: nothing else on the host sees it (no ICMP port
    /// unreachable goes back to the sender).
    Drop,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
        })
    }
}

/// What `ports add` sets on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSettings {
    /// Packets per second; 0 is unlimited.
    pub rate: u64,
    /// Largest burst in packets; 0 means one second's worth (= rate).
    pub burst: u64,
    /// What happens to a captured packet.
    pub action: Action,
    /// How its datagrams become events (format, packing).
    pub encoding: Encoding,
}

impl PortSettings {
    /// Refuses combinations that cannot be what the user meant.
    pub fn validate(&self) -> Result<(), String> {
        validate_rate("", self.rate, self.burst)
    }

    pub fn rule(&self) -> PortRule {
        let mut flags = udp_ebpf_common::PORT_ENABLED;
        if self.action == Action::Drop {
            flags |= udp_ebpf_common::PORT_DROP;
        }
        PortRule {
            flags,
            encoding: self.encoding.word(),
            limit: Limit::per_second(self.rate, self.burst),
        }
    }

    pub fn from_rule(rule: &PortRule) -> Self {
        Self {
            rate: rule.limit.rate(),
            burst: rule.limit.burst(),
            action: if rule.drops() {
                Action::Drop
            } else {
                Action::Pass
            },
            encoding: rule.encoding(),
        }
    }
}

impl std::fmt::Display for PortSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate == 0 {
            write!(f, "rate=unlimited action={}", self.action)?;
        } else {
            write!(
                f,
                "rate={}/s burst={} action={}",
                self.rate, self.burst, self.action
            )?;
        }
        write!(f, " format={}", self.encoding.format.name())?;
        if self.encoding.pack {
            f.write_str(" pack")?;
        }
        Ok(())
    }
}

/// Checks a rate/burst pair from the command line.
pub fn validate_rate(what: &str, rate: u64, burst: u64) -> Result<(), String> {
    if rate == 0 && burst != 0 {
        return Err(format!(
            "{what}burst {burst} without a {what}rate: give a rate (packets/s) too, or neither for no limit"
        ));
    }
    if rate > 1_000_000_000 {
        return Err(format!(
            "{what}rate {rate}/s is above 1,000,000,000/s, the finest the kernel's nanosecond clock can pace"
        ));
    }
    if burst > 1_000_000_000 {
        return Err(format!(
            "{what}burst {burst} is unreasonably large (max 1,000,000,000)"
        ));
    }
    Ok(())
}

/// One row of the busiest-ports table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub port: u16,
    pub settings: Option<PortSettings>,
    pub captured: u64,
    pub limited: u64,
}

/// One row of the busiest-sources table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStats {
    pub addr: std::net::IpAddr,
    pub captured: u64,
    pub limited: u64,
}

/// The settings that apply to all ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub global_rate: u64,
    pub global_burst: u64,
    pub source_rate: u64,
    pub source_burst: u64,
    pub reject_action: Action,
}

/// Reads and changes a running agent's maps.
pub struct Control {
    pin_dir: PathBuf,
    ports: Array<MapData, PortRule>,
    port_state: Array<MapData, PortState>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    allow_v4: LpmTrie<MapData, [u8; 4], u8>,
    deny_v4: LpmTrie<MapData, [u8; 4], u8>,
    allow_v6: LpmTrie<MapData, [u8; 16], u8>,
    deny_v6: LpmTrie<MapData, [u8; 16], u8>,
    /// Per port, per CPU: datagrams captured.
    port_captured: PerCpuArray<MapData, u64>,
}

impl Control {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ControlError> {
        let mut maps = Vec::with_capacity(PINNED.len());
        for name in PINNED {
            maps.push(open_pin(pin_dir, name)?);
        }
        Self::from_maps(pin_dir, maps)
    }

    /// Takes the control maps out of a freshly loaded object, pins them
    /// under `pin_dir`, and wraps them.
    pub fn take_and_pin(ebpf: &mut aya::Ebpf, pin_dir: &Path) -> Result<Self, ControlError> {
        Self::take(ebpf, pin_dir, true)
    }

    /// Takes the control maps without pinning them (tests, benchmarks).
    pub fn take_unpinned(ebpf: &mut aya::Ebpf) -> Result<Self, ControlError> {
        Self::take(ebpf, Path::new("(unpinned)"), false)
    }

    fn take(ebpf: &mut aya::Ebpf, pin_dir: &Path, pin: bool) -> Result<Self, ControlError> {
        let mut maps = Vec::with_capacity(PINNED.len());
        for name in PINNED {
            let path = pin_dir.join(name);
            let map = ebpf.take_map(name).ok_or_else(|| ControlError::Io {
                path: path.clone(),
                source: io::Error::other(format!("the eBPF object has no map {name}")),
            })?;
            if pin {
                map.pin(&path).map_err(|e| ControlError::Io {
                    path,
                    source: io::Error::other(e),
                })?;
            }
            maps.push(map);
        }
        Self::from_maps(pin_dir, maps)
    }

    /// `maps` in `PINNED` order.
    fn from_maps(pin_dir: &Path, maps: Vec<Map>) -> Result<Self, ControlError> {
        let conv = |name: &'static str| {
            move |source| ControlError::Map {
                what: "using map",
                path: pin_dir.join(name),
                source,
            }
        };
        let mut it = maps.into_iter();
        let mut next = || it.next().expect("one map per pinned name");
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            ports: Array::try_from(next()).map_err(conv(PORTS_PIN))?,
            port_state: Array::try_from(next()).map_err(conv(PORT_STATE_PIN))?,
            config: Array::try_from(next()).map_err(conv(CONFIG_PIN))?,
            counters: PerCpuArray::try_from(next()).map_err(conv(COUNTERS_PIN))?,
            sources: HashMap::try_from(next()).map_err(conv(SOURCES_PIN))?,
            allow_v4: LpmTrie::try_from(next()).map_err(conv(ALLOW_V4_PIN))?,
            deny_v4: LpmTrie::try_from(next()).map_err(conv(DENY_V4_PIN))?,
            allow_v6: LpmTrie::try_from(next()).map_err(conv(ALLOW_V6_PIN))?,
            deny_v6: LpmTrie::try_from(next()).map_err(conv(DENY_V6_PIN))?,
            port_captured: PerCpuArray::try_from(next()).map_err(conv(PORT_CAPTURED_PIN))?,
        })
    }

    fn map_err(
        &self,
        what: &'static str,
        name: &str,
    ) -> impl FnOnce(aya::maps::MapError) -> ControlError + use<> {
        let path = self.pin_dir.join(name);
        move |source| ControlError::Map { what, path, source }
    }

    /// Enables every port in `range` with `settings`.
    pub fn add_ports(
        &mut self,
        range: PortRange,
        settings: PortSettings,
    ) -> Result<(), ControlError> {
        let rule = settings.rule();
        for port in range.iter() {
            let index = u32::from(port);
            let err = self.map_err("reading", PORTS_PIN);
            let old = self.ports.get(&index, 0).map_err(err)?;
            if old.limit != rule.limit {
                // A new limit starts with a full burst: forget the bucket's
                // theoretical arrival time, which was paced by the old one.
                // (Counters written back here may lose an increment that
                // races with this update; they are informational.)
                let err = self.map_err("reading", PORT_STATE_PIN);
                let mut state = self.port_state.get(&index, 0).map_err(err)?;
                state.tat = 0;
                let err = self.map_err("updating", PORT_STATE_PIN);
                self.port_state.set(index, state, 0).map_err(err)?;
            }
            let err = self.map_err("updating", PORTS_PIN);
            self.ports.set(index, rule, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Enables or disables every port in `range` (no limit, action pass).
    pub fn set_ports(&mut self, range: PortRange, enabled: bool) -> Result<(), ControlError> {
        if enabled {
            return self.add_ports(range, PortSettings::default());
        }
        for port in range.iter() {
            let err = self.map_err("updating", PORTS_PIN);
            self.ports
                .set(u32::from(port), PortRule::default(), 0)
                .map_err(err)?;
        }
        Ok(())
    }

    /// The rule of one port, if it is enabled.
    pub fn port(&self, port: u16) -> Result<Option<PortSettings>, ControlError> {
        let err = self.map_err("reading", PORTS_PIN);
        let rule = self.ports.get(&u32::from(port), 0).map_err(err)?;
        Ok(rule.is_enabled().then(|| PortSettings::from_rule(&rule)))
    }

    /// Enabled ports grouped into ranges of identical settings.
    pub fn port_rules(&self) -> Result<Vec<(PortRange, PortSettings)>, ControlError> {
        let mut out: Vec<(PortRange, PortSettings)> = Vec::new();
        for port in 1..PORT_COUNT {
            let Some(settings) = self.port(port as u16)? else {
                continue;
            };
            let port = port as u16;
            match out.last_mut() {
                Some((r, s)) if *s == settings && r.last.checked_add(1) == Some(port) => {
                    r.last = port;
                }
                _ => out.push((PortRange::single(port), settings)),
            }
        }
        Ok(out)
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), ControlError> {
        let err = self.map_err("updating", CONFIG_PIN);
        self.config.set(0, config, 0).map_err(err)
    }

    pub fn config(&self) -> Result<Config, ControlError> {
        let err = self.map_err("reading", CONFIG_PIN);
        self.config.get(&0, 0).map_err(err)
    }

    pub fn limits(&self) -> Result<Limits, ControlError> {
        let c = self.config()?;
        Ok(Limits {
            global_rate: c.global.rate(),
            global_burst: c.global.burst(),
            source_rate: c.per_source.rate(),
            source_burst: c.per_source.burst(),
            reject_action: if c.flags & CONFIG_REJECT_DROP != 0 {
                Action::Drop
            } else {
                Action::Pass
            },
        })
    }

    /// Writes the limits in one map update (validated by the caller).
    pub fn set_limits(&mut self, limits: &Limits) -> Result<(), ControlError> {
        let mut c = self.config()?;
        c.global = Limit::per_second(limits.global_rate, limits.global_burst);
        c.per_source = Limit::per_second(limits.source_rate, limits.source_burst);
        c.flags &= !CONFIG_REJECT_DROP;
        if limits.reject_action == Action::Drop {
            c.flags |= CONFIG_REJECT_DROP;
        }
        self.set_config(c)
    }

    /// Adds a prefix to the allow (`allow = true`) or deny list.
    pub fn add_source(&mut self, net: IpNet, allow: bool) -> Result<(), ControlError> {
        self.add_sources(&[net], allow).map(drop)
    }

    /// Adds prefixes to the allow (`allow = true`) or deny list, all or
    /// none: the room left in each list ([`MAX_PREFIXES`] per address
    /// family) is checked before the first write, and if a write still
    /// fails (another process filled the list meanwhile), what this call
    /// added is removed again. Returns how many prefixes were not on the
    /// list before.
    pub fn add_sources(&mut self, nets: &[IpNet], allow: bool) -> Result<usize, ControlError> {
        let nets: BTreeSet<IpNet> = nets.iter().map(IpNet::trunc).collect();
        let (present4, present6) = (self.list4(allow)?, self.list6(allow)?);
        let new: Vec<IpNet> = nets
            .into_iter()
            .filter(|n| match n {
                IpNet::V4(n) => !present4.contains(n),
                IpNet::V6(n) => !present6.contains(n),
            })
            .collect();
        let new4 = new.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        check_room(allow, "IPv4", present4.len(), new4)?;
        check_room(allow, "IPv6", present6.len(), new.len() - new4)?;
        for (i, net) in new.iter().enumerate() {
            let name = list_name(net, allow);
            let result = match (net, allow) {
                (IpNet::V4(n), true) => self.allow_v4.insert(&key4(n), 1, 0),
                (IpNet::V4(n), false) => self.deny_v4.insert(&key4(n), 1, 0),
                (IpNet::V6(n), true) => self.allow_v6.insert(&key6(n), 1, 0),
                (IpNet::V6(n), false) => self.deny_v6.insert(&key6(n), 1, 0),
            };
            if let Err(e) = result {
                let err = self.map_err("updating", name)(e);
                for added in &new[..i] {
                    let _ = self.remove_source(*added, allow);
                }
                return Err(err);
            }
        }
        self.sync_list_flags()?;
        Ok(new.len())
    }

    /// Removes a prefix from a list; `Ok(false)` if it was not there.
    pub fn remove_source(&mut self, net: IpNet, allow: bool) -> Result<bool, ControlError> {
        let net = net.trunc();
        let name = list_name(&net, allow);
        let result = match (net, allow) {
            (IpNet::V4(n), true) => self.allow_v4.remove(&key4(&n)),
            (IpNet::V4(n), false) => self.deny_v4.remove(&key4(&n)),
            (IpNet::V6(n), true) => self.allow_v6.remove(&key6(&n)),
            (IpNet::V6(n), false) => self.deny_v6.remove(&key6(&n)),
        };
        let removed = match result {
            Ok(()) => true,
            Err(e) if key_not_found(&e) => false,
            Err(e) => return Err(self.map_err("updating", name)(e)),
        };
        self.sync_list_flags()?;
        Ok(removed)
    }

    /// The allow and deny lists.
    pub fn sources(&self) -> Result<(Vec<IpNet>, Vec<IpNet>), ControlError> {
        let list = |allow| -> Result<Vec<IpNet>, ControlError> {
            let mut out: Vec<IpNet> = self.list4(allow)?.into_iter().map(IpNet::V4).collect();
            out.extend(self.list6(allow)?.into_iter().map(IpNet::V6));
            out.sort();
            Ok(out)
        };
        Ok((list(true)?, list(false)?))
    }

    /// The prefixes of the IPv4 allow (`allow = true`) or deny list.
    fn list4(&self, allow: bool) -> Result<BTreeSet<Ipv4Net>, ControlError> {
        let (trie, name) = if allow {
            (&self.allow_v4, ALLOW_V4_PIN)
        } else {
            (&self.deny_v4, DENY_V4_PIN)
        };
        self.prefixes(trie, name, |a, len| Ipv4Net::new(a.into(), len))
    }

    /// The prefixes of the IPv6 allow (`allow = true`) or deny list.
    fn list6(&self, allow: bool) -> Result<BTreeSet<Ipv6Net>, ControlError> {
        let (trie, name) = if allow {
            (&self.allow_v6, ALLOW_V6_PIN)
        } else {
            (&self.deny_v6, DENY_V6_PIN)
        };
        self.prefixes(trie, name, |a, len| Ipv6Net::new(a.into(), len))
    }

    /// The keys of one list's trie, each made a prefix by `net`.
    fn prefixes<const N: usize, T: Ord, E>(
        &self,
        trie: &LpmTrie<MapData, [u8; N], u8>,
        name: &str,
        net: impl Fn([u8; N], u8) -> Result<T, E>,
    ) -> Result<BTreeSet<T>, ControlError> {
        trie.keys()
            .map(|k| {
                let k = k.map_err(self.map_err("reading", name))?;
                Ok(net(k.data(), k.prefix_len() as u8)
                    .ok()
                    .expect("kernel keeps valid prefixes"))
            })
            .collect()
    }

    /// An empty allow list means everyone, an empty deny list no one: the
    /// kernel looks a list up only while its flag says it has entries. The
    /// flag is set after a first prefix is added and cleared after the last
    /// one is removed, so it never hides an entry once a change returns.
    fn sync_list_flags(&mut self) -> Result<(), ControlError> {
        let allow = self.allow_v4.keys().next().is_some() || self.allow_v6.keys().next().is_some();
        let deny = self.deny_v4.keys().next().is_some() || self.deny_v6.keys().next().is_some();
        let mut c = self.config()?;
        let mut flags = c.flags & !(CONFIG_ALLOWLIST | CONFIG_DENYLIST);
        if allow {
            flags |= CONFIG_ALLOWLIST;
        }
        if deny {
            flags |= CONFIG_DENYLIST;
        }
        if flags != c.flags {
            c.flags = flags;
            self.set_config(c)?;
        }
        Ok(())
    }

    /// Ports with the most captured + limited packets, busiest first.
    pub fn busiest_ports(&self, n: usize) -> Result<Vec<PortStats>, ControlError> {
        let mut rows = Vec::new();
        for port in 1..PORT_COUNT {
            let err = self.map_err("reading", PORT_STATE_PIN);
            let st = self.port_state.get(&port, 0).map_err(err)?;
            let captured = self.port_captured(port as u16)?;
            if captured + st.limited > 0 {
                rows.push(PortStats {
                    port: port as u16,
                    settings: self.port(port as u16)?,
                    captured,
                    limited: st.limited,
                });
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.captured + r.limited));
        rows.truncate(n);
        Ok(rows)
    }

    /// Datagrams captured on `port`, summed over CPUs.
    pub fn port_captured(&self, port: u16) -> Result<u64, ControlError> {
        let err = self.map_err("reading", PORT_CAPTURED_PIN);
        let per_cpu = self.port_captured.get(&u32::from(port), 0).map_err(err)?;
        Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// Sources with the most captured + limited packets, busiest first.
    pub fn busiest_sources(&self, n: usize) -> Result<Vec<SourceStats>, ControlError> {
        let mut rows = Vec::new();
        for item in self.sources.iter() {
            // An entry can be evicted between listing and reading it.
            let Ok((k, st)) = item else { continue };
            let addr = if k.ip_version == udp_ebpf_common::IP_V4 {
                std::net::IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
            } else {
                std::net::IpAddr::V6(Ipv6Addr::from(k.addr))
            };
            rows.push(SourceStats {
                addr,
                captured: st.captured,
                limited: st.limited,
            });
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.captured + r.limited));
        rows.truncate(n);
        Ok(rows)
    }

    /// Kernel counters summed over CPUs, in `counter::NAMES` order.
    /// `seen` is the sum of the terminal outcomes as read here, so the
    /// figures add up even while traffic flows.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError> {
        let mut values = [0u64; counter::NAMES.len()];
        for (i, value) in values.iter_mut().enumerate() {
            if i as u32 != counter::SEEN {
                *value = self.kernel_counter(i as u32)?;
            }
        }
        values[counter::SEEN as usize] = counter::seen::<ControlError>(|i| Ok(values[i as usize]))?;
        Ok(counter::NAMES.iter().copied().zip(values).collect())
    }

    /// One kernel counter summed over CPUs. `seen` is not counted by the
    /// kernel: it is the sum of the terminal outcomes (`counter::seen`).
    pub fn counter(&self, index: u32) -> Result<u64, ControlError> {
        if index == counter::SEEN {
            return counter::seen(|i| self.kernel_counter(i));
        }
        self.kernel_counter(index)
    }

    /// One slot of the kernel's per-CPU `COUNTERS` array, summed over CPUs.
    fn kernel_counter(&self, index: u32) -> Result<u64, ControlError> {
        let err = self.map_err("reading", COUNTERS_PIN);
        Ok(self.counters.get(&index, 0).map_err(err)?.iter().sum())
    }
}

/// A delete of a missing key: aya reports it as ENOENT from the syscall.
fn key_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Refuses `adding` more prefixes to a list of `present` that would then
/// not fit in its map.
pub fn check_room(
    allow: bool,
    family: &'static str,
    present: usize,
    adding: usize,
) -> Result<(), ControlError> {
    if adding > 0 && present + adding > MAX_PREFIXES as usize {
        return Err(ControlError::ListFull {
            list: if allow { "allow" } else { "deny" },
            family,
            limit: MAX_PREFIXES,
            present,
            adding,
        });
    }
    Ok(())
}

fn list_name(net: &IpNet, allow: bool) -> &'static str {
    match (net, allow) {
        (IpNet::V4(_), true) => ALLOW_V4_PIN,
        (IpNet::V4(_), false) => DENY_V4_PIN,
        (IpNet::V6(_), true) => ALLOW_V6_PIN,
        (IpNet::V6(_), false) => DENY_V6_PIN,
    }
}

fn key4(n: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

fn key6(n: &Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

/// Parses each of `nets` as a prefix (`parse_net`).
pub fn parse_nets(nets: &[String]) -> anyhow::Result<Vec<IpNet>> {
    nets.iter()
        .map(|n| parse_net(n).map_err(|e| anyhow::anyhow!(e)))
        .collect()
}

/// Parses `198.18.0.0/15`, `fd00::/8`, or a bare address (one host).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!(
        "`{s}` is not a CIDR prefix or address (examples: 198.18.0.0/15, 203.0.113.7, fd00::/8)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_and_addresses() {
        assert_eq!(
            parse_net("198.18.0.0/15").unwrap().to_string(),
            "198.18.0.0/15"
        );
        assert_eq!(
            parse_net("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(parse_net("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_net("198.18.0.0/33").is_err());
        assert!(parse_net("nonsense").is_err());
        assert!(parse_net("198.18.0/16").is_err());
    }

    #[test]
    fn host_bits_are_ignored_so_remove_matches_add() {
        let a = parse_net("198.18.7.9/16").unwrap().trunc();
        assert_eq!(a.to_string(), "198.18.0.0/16");
    }

    #[test]
    fn refuses_burst_without_rate() {
        assert!(validate_rate("", 0, 100).is_err());
        assert!(validate_rate("", 0, 0).is_ok());
        assert!(validate_rate("", 1000, 0).is_ok());
        assert!(validate_rate("global-", 2_000_000_000, 0).is_err());
    }

    #[test]
    fn port_settings_round_trip_through_the_rule() {
        let s = PortSettings {
            rate: 1000,
            burst: 2000,
            action: Action::Drop,
            encoding: Encoding {
                format: udp_ebpf_common::Format::Syslog,
                pack: true,
            },
        };
        let rule = s.rule();
        assert!(rule.is_enabled() && rule.drops());
        assert_eq!(PortSettings::from_rule(&rule), s);
        assert_eq!(
            s.to_string(),
            "rate=1000/s burst=2000 action=drop format=syslog pack"
        );
        let unlimited = PortSettings::default();
        assert_eq!(
            unlimited.to_string(),
            "rate=unlimited action=pass format=base64"
        );
        assert!(!unlimited.rule().limit.is_limited());
    }
}
