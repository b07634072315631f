//! Command-line interface. Every flag has an `UDP_AGENT_…` environment
//! variable; the doc comment on each field is its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use udp_ebpf_common::{DEFAULT_RING_BYTES, MAX_CAPTURE};

use crate::{
    control::DEFAULT_PIN_DIR,
    encode::{DEFAULT_DETAIL_TYPE, DEFAULT_SOURCE},
    loader::ModeArg,
    ports::PortRange,
    sink::SinkKind,
};

/// UDP datagrams captured with XDP, turned into Amazon EventBridge events.
#[derive(Debug, Parser)]
#[command(name = "udp-agent", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and turn UDP datagrams on the chosen ports into
    /// events (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON).
    Run(RunArgs),
    /// Show or change the captured ports of a running agent.
    Ports(PortsArgs),
    /// Print a running agent's kernel counters.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct PinDirArg {
    /// bpffs directory where the agent pins its maps; `ports` and `stats`
    /// use it to find a running agent. One directory per agent instance.
    #[arg(long, env = "UDP_AGENT_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to. Repeat the flag (or separate with commas) for
    /// several interfaces.
    #[arg(
        long = "iface",
        short = 'i',
        env = "UDP_AGENT_IFACE",
        value_delimiter = ',',
        required = true
    )]
    pub ifaces: Vec<String>,

    /// Destination port to capture, `N` or `N-M` (1-65535). Repeat the flag
    /// or separate with commas. More can be added at runtime with
    /// `udp-agent ports add`.
    #[arg(
        long = "port",
        short = 'p',
        env = "UDP_AGENT_PORT",
        value_delimiter = ','
    )]
    pub ports: Vec<PortRange>,

    /// XDP attach mode: `auto` tries native (driver) mode and falls back to
    /// generic (skb) mode with a warning; `driver` and `skb` insist.
    #[arg(long, env = "UDP_AGENT_XDP_MODE", value_enum, default_value = "auto")]
    pub xdp_mode: ModeArg,

    /// Most payload bytes captured per datagram; longer payloads are
    /// captured cut to this length and marked `"Truncated": true`. At most
    /// 9216 (a whole EC2 jumbo frame's payload is 8973).
    #[arg(long, env = "UDP_AGENT_SNAPLEN", default_value_t = MAX_CAPTURE,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CAPTURE)))]
    pub snaplen: u32,

    #[command(flatten)]
    pub pin: PinDirArg,

    /// Where events go. `stdout` prints each PutEvents entry as a JSON line
    /// (a dry run).
    #[arg(long, env = "UDP_AGENT_SINK", value_enum, default_value = "stdout")]
    pub sink: SinkKind,

    /// `Source` of every event.
    #[arg(long, env = "UDP_AGENT_SOURCE", default_value = DEFAULT_SOURCE)]
    pub source: String,

    /// `DetailType` of every event (at most 128 characters, an AWS limit).
    #[arg(long, env = "UDP_AGENT_DETAIL_TYPE", default_value = DEFAULT_DETAIL_TYPE)]
    pub detail_type: String,

    /// Size of the kernel ring buffer in bytes: a power of two, at least one
    /// page. It absorbs bursts while the agent catches up; records use
    /// 8 + 64 + payload bytes, rounded up to 8.
    #[arg(long, env = "UDP_AGENT_RING_BYTES", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,

    /// Packets that may wait between capture and encoding; past this,
    /// packets are dropped and counted (`queue_drops`).
    #[arg(long, env = "UDP_AGENT_QUEUE_CAPACITY", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// Longest time an entry waits for a batch to fill before it is sent.
    #[arg(long, env = "UDP_AGENT_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
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
    /// Start capturing these ports (`N` or `N-M`).
    Add {
        #[arg(required = true, value_delimiter = ',')]
        ports: Vec<PortRange>,
    },
    /// Stop capturing these ports (`N` or `N-M`).
    Remove {
        #[arg(required = true, value_delimiter = ',')]
        ports: Vec<PortRange>,
    },
    /// Print the captured ports, one port or range per line.
    List,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Print a JSON object instead of `name value` lines.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// Checks that clap's types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let page = 4096u32;
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < page {
            return Err(format!(
                "--ring-bytes {} must be a power of two of at least {page}",
                self.ring_bytes
            ));
        }
        if self.detail_type.chars().count() > 128 || self.detail_type.is_empty() {
            return Err("--detail-type must be 1 to 128 characters (an AWS limit)".into());
        }
        if self.source.is_empty() || self.source.chars().count() > 256 {
            return Err("--source must be 1 to 256 characters (an AWS limit)".into());
        }
        Ok(())
    }
}
