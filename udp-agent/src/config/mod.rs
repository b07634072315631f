//! The configuration layer: the only owner of flags, their defaults and
//! the config file ([`file`]). Every flag has an `UDP_AGENT_…` environment
//! variable; the doc comment on each field is its help text. It turns what
//! was given into each stage's own settings (the stages never read flags):
//! [`control`] for the control plane, [`sink`] for the sinks and the
//! spool.

pub mod control;
pub mod file;
pub mod sink;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use udp_ebpf_common::{DEFAULT_RING_BYTES, MAX_SNAPLEN};

pub use self::{
    control::{
        FirewallArgs, FormatArg, LimitsAction, LimitsArgs, PinDirArg, PortEncodingArgs,
        PortLimitArgs, PortsAction, PortsArgs, SourcesAction, SourcesArgs, Startup, StatsArgs,
        startup,
    },
    sink::{EventBridgeArgs, FsyncArg, SpoolArgs, parse_bytes},
};
use crate::{
    afxdp::CapturePath,
    encode::{
        DEFAULT_DETAIL_TYPE, DEFAULT_SOURCE,
        pack::{DEFAULT_PACK_LINGER_MS, DEFAULT_PACK_MAX_BYTES, PackSettings},
    },
    health::DEFAULT_SINK_GRACE,
    loader::ModeArg,
    logging::LogArgs,
    ports::PortRange,
    sink::{
        SinkKind,
        eventbridge::{MAX_LARGE_REQUEST_BYTES, MAX_REQUEST_BYTES},
    },
};

/// What `--version` prints: the release and the git commit it was built
/// from ("unknown" when built outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BUILD_GIT_REV"),
    ")"
);

/// UDP datagrams captured with XDP, turned into Amazon EventBridge events.
#[derive(Debug, Parser)]
#[command(name = "udp-agent", version = VERSION, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the `run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and turn UDP datagrams on the chosen ports into
    /// events (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON).
    Run(RunArgs),
    /// Show or change the captured ports of a running agent (and their
    /// rate limits and actions).
    Ports(PortsArgs),
    /// Show or change a running agent's source allow and deny lists.
    Sources(SourcesArgs),
    /// Show or change a running agent's global and per-source limits.
    Limits(LimitsArgs),
    /// Print a running agent's kernel counters and its busiest ports and
    /// sources.
    Stats(StatsArgs),
    /// Print the shell completion script for SHELL on stdout (the package
    /// installs those of bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (udp-agent.1, udp-agent-run.1, …) into DIR
    /// (for packaging).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read settings from this TOML file: one key per flag of `run`, named
    /// like the flag without its dashes (`iface = ["eth0"]`, `port =
    /// ["514", "6000-6010"]`, `event-bus = "udp-events"`, `rate = 1000`).
    /// A flag or its UDP_AGENT_* variable wins over the file (a list given
    /// on the command line replaces the file's list); an unknown key is an
    /// error.
    #[arg(long, env = "UDP_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface to attach to (required). Repeat the flag (or separate with
    /// commas) for several interfaces. An interface that goes away (deleted,
    /// moved to another namespace) is detached and re-attached when an
    /// interface of that name is back.
    #[arg(
        long = "iface",
        short = 'i',
        env = "UDP_AGENT_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,

    /// Start even if an --iface does not exist yet, and attach to it when it
    /// appears (checked every second). Without it, an unknown interface
    /// stops the start.
    #[arg(long, env = "UDP_AGENT_WAIT_FOR_IFACE")]
    pub wait_for_iface: bool,

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
    /// captured cut to this length and marked `"Truncated": true`. The
    /// default keeps every payload whole, within the capture limits: a
    /// datagram that arrives in one frame is captured up to 9216 bytes (a
    /// whole EC2 jumbo frame's payload is 8973), one reassembled from IP
    /// fragments up to the UDP maximum (65,507 bytes). 0 is refused: every
    /// event would carry an empty `Payload`.
    #[arg(long, env = "UDP_AGENT_SNAPLEN", default_value_t = MAX_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SNAPLEN)))]
    pub snaplen: u32,

    /// How long the IP fragments of an incomplete datagram wait for the
    /// rest, from the first one captured (Linux's `ipfrag_time` is 30 s);
    /// then they are dropped and counted (`fragment_timeout`).
    #[arg(long, env = "UDP_AGENT_REASSEMBLY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub reassembly_timeout: Duration,

    /// Most memory the fragments of incomplete datagrams hold together:
    /// their data, plus 256 bytes per datagram and 64 per fragment. To take
    /// a fragment past it, the oldest incomplete datagrams are dropped and
    /// counted (`fragment_evicted`). At least 131072 (128 KiB), so that a
    /// datagram of the largest size can complete.
    #[arg(long, env = "UDP_AGENT_REASSEMBLY_MAX_BYTES",
          default_value_t = crate::reassembly::DEFAULT_MAX_BYTES)]
    pub reassembly_max_bytes: usize,

    #[command(flatten)]
    pub pin: PinDirArg,

    /// Where events go. `auto`: to EventBridge if --event-bus is given,
    /// otherwise the stdout dry run. `stdout`: print each PutEvents entry as
    /// a JSON line and send nothing (with --event-bus, the lines carry that
    /// bus). `eventbridge`: send to --event-bus, or to the account's
    /// `default` bus if none is given.
    #[arg(long, env = "UDP_AGENT_SINK", value_enum, default_value = "auto")]
    pub sink: SinkKind,

    /// Event bus to send to, by name or ARN; sets every entry's
    /// `EventBusName` (default: `default`). Giving it selects the
    /// EventBridge sink unless --sink says otherwise.
    #[arg(long, env = "UDP_AGENT_EVENT_BUS", value_name = "NAME|ARN")]
    pub event_bus: Option<String>,

    /// `Source` of every event.
    #[arg(long, env = "UDP_AGENT_SOURCE", default_value = DEFAULT_SOURCE)]
    pub source: String,

    /// `DetailType` of every event (at most 128 characters, an AWS limit).
    #[arg(long, env = "UDP_AGENT_DETAIL_TYPE", default_value = DEFAULT_DETAIL_TYPE)]
    pub detail_type: String,

    /// Size of the kernel ring buffer in bytes: a power of two, at least one
    /// page. It absorbs bursts while the agent catches up; a record takes
    /// 72 bytes plus its payload rounded up to a size class (32, 48, 64, 96,
    /// … 1,536, … 9,216 bytes; classes at most 1.5× apart).
    #[arg(long, env = "UDP_AGENT_RING_BYTES", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,

    /// How consumed ports (`--action drop`) reach the agent. `ringbuf`: the
    /// BPF ring buffer, like every observed port. `afxdp`: one AF_XDP
    /// socket per RX queue of each interface (zero-copy where the driver
    /// offers it, copy mode otherwise; needs CAP_NET_RAW). `auto`: AF_XDP
    /// where the driver binds it zero-copy, the ring buffer elsewhere (in
    /// copy mode, on veth and generic XDP, the ring measured cheaper); it
    /// logs which it took per interface and why.
    #[arg(
        long,
        env = "UDP_AGENT_CAPTURE_PATH",
        value_enum,
        default_value = "auto"
    )]
    pub capture_path: CapturePath,

    /// UMEM frames of each AF_XDP socket (a power of two, 64 or more):
    /// 2 KiB each, locked in memory, one per datagram waiting to be read
    /// (jumbo datagrams take several); the socket drops and counts what
    /// finds none free.
    #[arg(long, env = "UDP_AGENT_XSK_FRAMES", default_value_t = 4096,
          value_parser = xsk_frames)]
    pub xsk_frames: u32,

    /// Encoded packets that may wait for the sink (in batches of up to 10,
    /// and at most ~16 MiB of entries); past this, packets are dropped and
    /// counted (`queue_drops`).
    #[arg(long, env = "UDP_AGENT_QUEUE_CAPACITY", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// Longest time an entry waits for a batch to fill before it is sent.
    #[arg(long, env = "UDP_AGENT_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,

    #[command(flatten)]
    pub port_limit: PortLimitArgs,

    #[command(flatten)]
    pub port_encoding: PortEncodingArgs,

    /// Most bytes of a packed event, as EventBridge counts an entry's size:
    /// a pack that the next datagram would take past it is sent, and the
    /// datagram starts the next. The default, 65536, is one billed event
    /// (each started 64 KB of an event is billed as one). At most
    /// --max-entry-bytes.
    #[arg(long, env = "UDP_AGENT_PACK_MAX_BYTES", default_value_t = DEFAULT_PACK_MAX_BYTES,
          value_parser = clap::value_parser!(u32).range(1024..=MAX_LARGE_REQUEST_BYTES as i64))]
    pub pack_max_bytes: u32,

    /// Longest a packed event waits for more datagrams after its first.
    #[arg(long, env = "UDP_AGENT_PACK_LINGER_MS", default_value_t = DEFAULT_PACK_LINGER_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub pack_linger_ms: u64,

    /// Largest entry, and PutEvents request, the agent makes (as AWS counts
    /// their size): 262144 (256 KB, the PutEvents limit), or up to 1048576
    /// (1 MB) in Regions that accept events that large.
    #[arg(long, env = "UDP_AGENT_MAX_ENTRY_BYTES", default_value_t = MAX_REQUEST_BYTES as u32,
          value_parser = clap::value_parser!(u32)
              .range(MAX_REQUEST_BYTES as i64..=MAX_LARGE_REQUEST_BYTES as i64))]
    pub max_entry_bytes: u32,

    #[command(flatten)]
    pub firewall: FirewallArgs,

    #[command(flatten)]
    pub eventbridge: EventBridgeArgs,

    #[command(flatten)]
    pub spool: SpoolArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (kernel, pipeline
    /// and sink counters, delivery latency, attached interfaces), and the
    /// health check at /healthz. Off unless given; keep it on loopback
    /// (e.g. 127.0.0.1:9102) or behind a firewall: the endpoint has no
    /// authentication, and the agent warns at start-up when ADDR is not a
    /// loopback address. Port 0 picks a free port (logged).
    #[arg(
        long,
        env = "UDP_AGENT_METRICS_ADDR",
        value_name = "ADDR",
        help_heading = "Metrics and logs"
    )]
    pub metrics_addr: Option<SocketAddr>,

    /// Serve only the health check, at http://ADDR/healthz, for a load
    /// balancer: 200 while the XDP program is attached on every --iface and
    /// the sink is delivering or idle, 503 with a JSON reason otherwise
    /// (detached, sink failing, spool full, cost guard tripped). It reveals
    /// no counters, so it is safe to open to the VPC (e.g. 0.0.0.0:9103).
    /// /healthz is also served on --metrics-addr. Off unless given.
    #[arg(
        long,
        env = "UDP_AGENT_HEALTH_ADDR",
        value_name = "ADDR",
        help_heading = "Metrics and logs"
    )]
    pub health_addr: Option<SocketAddr>,

    /// How long the sink may go without delivering anything while entries
    /// wait or fail before /healthz answers 503 (`sink_failing`).
    #[arg(long, env = "UDP_AGENT_HEALTH_SINK_GRACE", default_value = DEFAULT_SINK_GRACE,
          value_parser = humantime::parse_duration, value_name = "DURATION",
          help_heading = "Metrics and logs")]
    pub health_sink_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

/// `--xsk-frames`: a power of two, 64 to 2^20 (2 GiB of UMEM).
fn xsk_frames(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of frames"))?;
    if !n.is_power_of_two() || !(64..=1 << 20).contains(&n) {
        return Err(format!(
            "{n} is not a power of two from 64 to 1048576 (e.g. 4096)"
        ));
    }
    Ok(n)
}

impl RunArgs {
    /// Checks that clap's types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.ifaces.is_empty() {
            return Err(
                "no interface to attach to: give --iface IF (UDP_AGENT_IFACE, or `iface` in --config)"
                    .into(),
            );
        }
        if let Some(bad) = self.ifaces.iter().find(|i| i.is_empty() || i.len() > 15) {
            return Err(format!(
                "--iface {bad:?} is not an interface name (1 to 15 bytes; see `ip -br link`)"
            ));
        }
        let page = 4096u32;
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < page {
            return Err(format!(
                "--ring-bytes {} must be a power of two of at least {page}",
                self.ring_bytes
            ));
        }
        if self.reassembly_timeout.is_zero() {
            return Err("--reassembly-timeout must be more than 0 (e.g. 30s)".into());
        }
        if self.reassembly_max_bytes < crate::reassembly::MIN_MAX_BYTES {
            return Err(format!(
                "--reassembly-max-bytes {} is too small: a datagram of the largest size needs {} bytes to complete",
                self.reassembly_max_bytes,
                crate::reassembly::MIN_MAX_BYTES
            ));
        }
        if self.detail_type.chars().count() > 128 || self.detail_type.is_empty() {
            return Err("--detail-type must be 1 to 128 characters (an AWS limit)".into());
        }
        if self.source.is_empty() || self.source.chars().count() > 256 {
            return Err("--source must be 1 to 256 characters (an AWS limit)".into());
        }
        if self.pack_max_bytes > self.max_entry_bytes {
            return Err(format!(
                "--pack-max-bytes {} is more than --max-entry-bytes {}: lower it, or raise --max-entry-bytes where the Region accepts larger events",
                self.pack_max_bytes, self.max_entry_bytes
            ));
        }
        if let Some(bus) = &self.event_bus
            && (bus.is_empty() || bus.chars().count() > 1600)
        {
            return Err(
                "--event-bus must be an event bus name or ARN of 1 to 1600 characters (an AWS limit)"
                    .into(),
            );
        }
        self.eventbridge.validate()?;
        if self.spool.spool_max_bytes < 1 << 20 {
            return Err("--spool-max-bytes must be at least 1MiB".into());
        }
        if self.spool.spool_fsync_interval.is_zero() {
            return Err("--spool-fsync-interval must be more than 0".into());
        }
        if self.spool.spool_max_age.is_zero() {
            return Err("--spool-max-age must be more than 0".into());
        }
        Ok(())
    }
}

impl RunArgs {
    /// How packing ports' packs are bounded.
    pub fn pack_settings(&self) -> PackSettings {
        PackSettings {
            max_bytes: self.pack_max_bytes as usize,
            linger: Duration::from_millis(self.pack_linger_ms),
        }
    }
}
