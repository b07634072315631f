//! The flags of the control plane: ports with their limits, actions and
//! encodings, the source lists and limits of `run` and of the control
//! commands (`ports`, `sources`, `limits`, `stats`), and the start-up plan
//! they make ([`Startup`]): validated whole before the first map write, so
//! a bad value changes nothing.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use udp_ebpf_common::{Encoding, Format};

use crate::{
    control::{
        Action, Control, DEFAULT_PIN_DIR, Limits, PortSettings, check_room, parse_nets,
        validate_rate,
    },
    ports::PortRange,
};

/// The pin directory of the agent a command talks to (or that `run` pins
/// its maps under).
#[derive(Debug, Args)]
pub struct PinDirArg {
    /// bpffs directory where the agent pins its maps; `ports`, `sources`,
    /// `limits` and `stats` use it to find a running agent. One directory
    /// per agent instance.
    #[arg(long, env = "UDP_AGENT_PIN_DIR", default_value = DEFAULT_PIN_DIR, global = true)]
    pub pin_dir: std::path::PathBuf,
}

/// Rate limit and action of ports (for `run --port` and `ports add`).
#[derive(Clone, Debug, Default, Args)]
pub struct PortLimitArgs {
    /// Most packets per second captured on each of these ports (enforced
    /// in the kernel, for all CPUs together); 0 = unlimited.
    #[arg(long, env = "UDP_AGENT_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Largest burst, in packets, above the rate (default: one second's
    /// worth, i.e. the rate).
    #[arg(long, env = "UDP_AGENT_BURST", default_value_t = 0)]
    pub burst: u64,
    /// After capture: `pass` hands the packet on to the host as well;
    /// `drop` consumes it (the agent is its only receiver, no ICMP
    /// port-unreachable goes back).
    #[arg(long, env = "UDP_AGENT_ACTION", value_enum, default_value = "pass")]
    pub action: Action,
}

/// `--format`: how a port's payloads appear in its events; the values are
/// [`Format`]'s names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormatArg(pub Format);

impl clap::ValueEnum for FormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [FormatArg; 5] = [
            FormatArg(Format::ALL[0]),
            FormatArg(Format::ALL[1]),
            FormatArg(Format::ALL[2]),
            FormatArg(Format::ALL[3]),
            FormatArg(Format::ALL[4]),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self.0 {
            Format::Base64 => "`Payload`: standard base64 of the bytes (the article's event)",
            Format::Text => {
                "`Text`: the payload as a string when it is UTF-8 (exact, trailing newline kept); other payloads fall back to `Payload`"
            }
            Format::Hex => "`Hex`: lowercase hex digits",
            Format::Json => {
                "`Json`: the payload as a JSON value when it is JSON; other payloads fall back to `Payload`"
            }
            Format::Syslog => {
                "`Syslog`: facility, severity, timestamp, hostname, app name… parsed from RFC 5424 and RFC 3164 messages (what does not parse is the `Message`), with the bytes kept in `Text` (or `Payload`)"
            }
        };
        Some(clap::builder::PossibleValue::new(self.0.name()).help(help))
    }
}

/// Payload format and packing of ports (for `run --port` and `ports add`).
#[derive(Clone, Debug, Default, Args)]
pub struct PortEncodingArgs {
    /// How each datagram's payload appears in its event (every event names
    /// it in `Format`): `base64` (`Payload`), `text` (`Text`), `hex`
    /// (`Hex`), `json` (`Json`) or `syslog` (`Syslog` fields plus `Text`).
    /// A payload that does not fit its format is sent as base64 `Payload`.
    #[arg(long, env = "UDP_AGENT_FORMAT", value_enum, default_value = "base64")]
    pub format: FormatArg,
    /// Gather these ports' datagrams into packed events (one per port and
    /// interface, `Count` and `Packets: [...]`, each packet with its
    /// `Source`, `Time` and payload), up to --pack-max-bytes or
    /// --pack-linger-ms: far fewer billed events and PutEvents requests.
    #[arg(long, env = "UDP_AGENT_PACK")]
    pub pack: bool,
}

impl PortEncodingArgs {
    pub fn encoding(&self) -> Encoding {
        Encoding {
            format: self.format.0,
            pack: self.pack,
        }
    }
}

impl PortLimitArgs {
    pub fn settings(&self, encoding: &PortEncodingArgs) -> Result<PortSettings> {
        let s = PortSettings {
            rate: self.rate,
            burst: self.burst,
            action: self.action,
            encoding: encoding.encoding(),
        };
        s.validate().map_err(|e| anyhow!(e))?;
        Ok(s)
    }
}

/// Limits and source lists that apply to all ports (flags of `run`).
#[derive(Clone, Debug, Default, Args)]
pub struct FirewallArgs {
    /// Cap on packets per second captured across all ports; 0 = unlimited.
    #[arg(long, env = "UDP_AGENT_GLOBAL_RATE", default_value_t = 0)]
    pub global_rate: u64,
    /// Burst above the global cap (default: the rate).
    #[arg(long, env = "UDP_AGENT_GLOBAL_BURST", default_value_t = 0)]
    pub global_burst: u64,
    /// Most packets per second captured from any one source address, so one
    /// flooding sender cannot starve the others; 0 = unlimited.
    #[arg(long, env = "UDP_AGENT_SOURCE_RATE", default_value_t = 0)]
    pub source_rate: u64,
    /// Burst above the per-source rate (default: the rate).
    #[arg(long, env = "UDP_AGENT_SOURCE_BURST", default_value_t = 0)]
    pub source_burst: u64,
    /// What happens to over-limit and denied packets (never captured):
    /// `pass` to the host, or `drop`.
    #[arg(
        long,
        env = "UDP_AGENT_REJECT_ACTION",
        value_enum,
        default_value = "pass"
    )]
    pub reject_action: Action,
    /// Capture only from these sources (CIDR or address; repeatable). An
    /// empty allow list means everyone.
    #[arg(long = "allow", env = "UDP_AGENT_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Never capture from these sources (CIDR or address; repeatable).
    /// Deny wins over allow.
    #[arg(long = "deny", env = "UDP_AGENT_DENY", value_delimiter = ',')]
    pub deny: Vec<String>,
}

impl FirewallArgs {
    fn limits(&self) -> Result<Limits> {
        validate_rate("global-", self.global_rate, self.global_burst).map_err(|e| anyhow!(e))?;
        validate_rate("source-", self.source_rate, self.source_burst).map_err(|e| anyhow!(e))?;
        Ok(Limits {
            global_rate: self.global_rate,
            global_burst: self.global_burst,
            source_rate: self.source_rate,
            source_burst: self.source_burst,
            reject_action: self.reject_action,
        })
    }
}

/// Checked start-up settings, ready to write.
#[derive(Debug)]
pub struct Startup {
    /// Sorted, without overlaps: at most 32,768 ranges however many ports
    /// were listed.
    ports: Vec<PortRange>,
    settings: PortSettings,
    limits: Limits,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Validates the firewall flags of `run` before anything is loaded.
pub fn startup(
    ports: &[PortRange],
    port_args: &PortLimitArgs,
    encoding: &PortEncodingArgs,
    fw: &FirewallArgs,
) -> Result<Startup> {
    let allow = parse_nets(&fw.allow)?;
    let deny = parse_nets(&fw.deny)?;
    // The maps start empty: each list must fit whole.
    for (nets, allow) in [(&allow, true), (&deny, false)] {
        let distinct: BTreeSet<IpNet> = nets.iter().map(IpNet::trunc).collect();
        let v4 = distinct
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        check_room(allow, "IPv4", 0, v4)?;
        check_room(allow, "IPv6", 0, distinct.len() - v4)?;
    }
    Ok(Startup {
        ports: merge(ports),
        settings: port_args.settings(encoding)?,
        limits: fw.limits()?,
        allow,
        deny,
    })
}

impl Startup {
    /// Writes ports, limits and lists into a freshly loaded program's maps.
    pub fn apply(&self, control: &mut Control) -> Result<()> {
        control.set_limits(&self.limits)?;
        control.add_sources(&self.allow, true)?;
        control.add_sources(&self.deny, false)?;
        for range in &self.ports {
            control.add_ports(*range, self.settings)?;
        }
        Ok(())
    }

    /// The start-up ports for a log line: ranges, and only the first
    /// [`LOGGED_RANGES`] of them, so that a long list cannot make a
    /// megabyte-long line.
    pub fn ports_summary(&self) -> String {
        let mut text: Vec<String> = self
            .ports
            .iter()
            .take(LOGGED_RANGES)
            .map(ToString::to_string)
            .collect();
        if self.ports.len() > LOGGED_RANGES {
            let ports: usize = self.ports.iter().map(PortRange::len).sum();
            text.push(format!(
                "… ({} ranges, {ports} ports in all: see `udp-agent ports list`)",
                self.ports.len()
            ));
        }
        text.join(",")
    }
}

/// Most port ranges the start-up log line names.
pub const LOGGED_RANGES: usize = 32;

/// `ranges` sorted, with overlapping and adjacent ones merged.
fn merge(ranges: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<PortRange> = Vec::with_capacity(sorted.len().min(1024));
    for r in sorted {
        match out.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[derive(Debug, Args)]
pub struct PortsArgs {
    #[command(subcommand)]
    pub action: PortsAction,
    #[command(flatten)]
    pub pin: PinDirArg,
}

#[derive(Debug, Subcommand)]
pub enum PortsAction {
    /// Start capturing these ports (`N` or `N-M`), or change their limit,
    /// action, format and packing (what is not given is set to its
    /// default).
    Add {
        #[arg(required = true, value_delimiter = ',')]
        ports: Vec<PortRange>,
        #[command(flatten)]
        limit: PortLimitArgs,
        #[command(flatten)]
        encoding: PortEncodingArgs,
    },
    /// Stop capturing these ports (`N` or `N-M`).
    Remove {
        #[arg(required = true, value_delimiter = ',')]
        ports: Vec<PortRange>,
    },
    /// Print the captured ports with their limit, action, format and
    /// packing, one port or range per line.
    List,
}

#[derive(Debug, Args)]
pub struct SourcesArgs {
    #[command(subcommand)]
    pub action: SourcesAction,
    #[command(flatten)]
    pub pin: PinDirArg,
}

#[derive(Debug, Subcommand)]
pub enum SourcesAction {
    /// Add prefixes to the allow list: once it is not empty, only sources
    /// on it are captured.
    Allow {
        #[arg(required = true, value_delimiter = ',')]
        nets: Vec<String>,
    },
    /// Add prefixes to the deny list: sources on it are never captured.
    Deny {
        #[arg(required = true, value_delimiter = ',')]
        nets: Vec<String>,
    },
    /// Remove prefixes from whichever list holds them.
    Remove {
        #[arg(required = true, value_delimiter = ',')]
        nets: Vec<String>,
    },
    /// Print both lists.
    List,
}

#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub action: LimitsAction,
    #[command(flatten)]
    pub pin: PinDirArg,
}

#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Change the global cap, the per-source limit or the reject action;
    /// what is not given stays as it is.
    Set {
        /// Packets/s across all ports (0 = unlimited).
        #[arg(long)]
        global_rate: Option<u64>,
        /// Burst above the global rate (0 = the rate).
        #[arg(long)]
        global_burst: Option<u64>,
        /// Packets/s from any one source (0 = unlimited).
        #[arg(long)]
        source_rate: Option<u64>,
        /// Burst above the per-source rate (0 = the rate).
        #[arg(long)]
        source_burst: Option<u64>,
        /// `pass` or `drop` for over-limit and denied packets.
        #[arg(long, value_enum)]
        reject_action: Option<Action>,
    },
    /// Print the current limits.
    Show,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// How many of the busiest ports and sources to show.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_refuses_bad_values_before_touching_anything() {
        let ports = ["514".parse().unwrap()];
        let ok = PortLimitArgs::default();
        let enc = PortEncodingArgs::default();
        let fw = FirewallArgs {
            deny: vec!["198.18.0.0/33".into()],
            ..FirewallArgs::default()
        };
        let err = startup(&ports, &ok, &enc, &fw).unwrap_err().to_string();
        assert!(err.contains("198.18.0.0/33"), "{err}");
        let bad_port = PortLimitArgs {
            burst: 10,
            ..PortLimitArgs::default()
        };
        let err = startup(&ports, &bad_port, &enc, &FirewallArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("without a rate"), "{err}");
        let bad_global = FirewallArgs {
            global_burst: 5,
            ..FirewallArgs::default()
        };
        let err = startup(&ports, &ok, &enc, &bad_global)
            .unwrap_err()
            .to_string();
        assert!(err.contains("global-burst"), "{err}");
        assert!(startup(&ports, &ok, &enc, &FirewallArgs::default()).is_ok());
    }

    /// A list longer than its map holds is refused whole, before anything
    /// is loaded; repeats and host bits do not count twice.
    #[test]
    fn startup_refuses_lists_that_do_not_fit() {
        let ports = ["514".parse().unwrap()];
        let hosts = |n: u32| -> Vec<String> {
            (0..n)
                .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
                .collect()
        };
        let limit = udp_ebpf_common::MAX_PREFIXES;
        let fw = FirewallArgs {
            deny: hosts(limit + 1),
            ..FirewallArgs::default()
        };
        let err = startup(
            &ports,
            &PortLimitArgs::default(),
            &PortEncodingArgs::default(),
            &fw,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("deny list holds at most {limit} IPv4 prefixes")),
            "{err}"
        );
        let mut full = hosts(limit);
        full.extend(["10.0.0.0/32".into(), "10.0.0.1/32".into()]);
        full.push("fd00::1".into());
        let fw = FirewallArgs {
            allow: full,
            ..FirewallArgs::default()
        };
        assert!(
            startup(
                &ports,
                &PortLimitArgs::default(),
                &PortEncodingArgs::default(),
                &fw
            )
            .is_ok()
        );
    }

    #[test]
    fn start_up_ports_are_merged_and_logged_as_ranges() {
        let ports: Vec<PortRange> = ["9", "1-3", "5", "4", "2", "100-200", "150-250", "251"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let s = startup(
            &ports,
            &PortLimitArgs::default(),
            &PortEncodingArgs::default(),
            &FirewallArgs::default(),
        )
        .unwrap();
        assert_eq!(s.ports_summary(), "1-5,9,100-251");
        let every_other: Vec<PortRange> = (1..=1000u16).map(|p| PortRange::single(p * 2)).collect();
        let s = startup(
            &every_other,
            &PortLimitArgs::default(),
            &PortEncodingArgs::default(),
            &FirewallArgs::default(),
        )
        .unwrap();
        let summary = s.ports_summary();
        assert!(
            summary.starts_with("2,4,6,")
                && summary
                    .ends_with("(1000 ranges, 1000 ports in all: see `udp-agent ports list`)"),
            "{summary}"
        );
        let named = summary.split(',').take_while(|r| !r.starts_with('…'));
        assert_eq!(named.count(), LOGGED_RANGES);
    }
}
