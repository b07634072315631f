//! The flags of the sinks and the spool, their defaults, and the settings
//! they make: [`RunArgs::eventbridge_settings`], [`SpoolArgs::settings`].

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::RunArgs;
use crate::{
    sink::eventbridge::{MAX_REQUEST_BYTES, Settings, retry::Backoff},
    spool::{self, FsyncPolicy, FullPolicy},
};

/// Default --max-in-flight: requests in flight = request rate × latency, so
/// 32 carry the default 300 requests/s at up to 100 ms each (AWS answers in
/// tens of ms from EC2), and ~140,000 events/s at local-endpoint latency.
/// Raise it with --max-put-events-per-second.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 32;
/// Default --max-put-events-per-second: under the smallest Regional
/// "PutEvents throttle limit in transactions per second" quota (400/s),
/// burst included (see [`super::rate_limit`]).
pub const DEFAULT_MAX_PUT_EVENTS_PER_SECOND: u32 = 300;
/// Default --max-events-per-hour: about US$1 an hour at US$1.00 per
/// million custom events.
pub const DEFAULT_MAX_EVENTS_PER_HOUR: u64 = 1_000_000;
/// Default --request-timeout and --drain-timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default --dead-letter-max-bytes.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 256 << 20;
/// Default --spool-dir: the systemd unit's StateDirectory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/udp-agent/spool";
/// Default --spool-max-bytes.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Default --spool-max-age.
pub const DEFAULT_SPOOL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How the EventBridge sink connects and how hard it may push. Region and
/// credentials come from the standard AWS chain: `AWS_REGION`/
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, a
/// profile (`AWS_PROFILE`, ~/.aws/config and credentials), web identity, or
/// the EC2 instance role through IMDSv2. They are resolved once at start-up;
/// if either is missing the agent refuses to start.
#[derive(Debug, Args)]
#[command(next_help_heading = "EventBridge sink")]
pub struct EventBridgeArgs {
    /// AWS Region, overriding the standard chain (`AWS_REGION`, profile,
    /// IMDS).
    #[arg(long, env = "UDP_AGENT_REGION")]
    pub region: Option<String>,

    /// Send to this URL instead of the Region's public endpoint: a VPC
    /// interface endpoint, or a test endpoint such as
    /// `http://127.0.0.1:4010`. `AWS_ENDPOINT_URL_EVENTBRIDGE` and
    /// `AWS_ENDPOINT_URL` are honoured too.
    #[arg(long, env = "UDP_AGENT_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// EventBridge global endpoint ID (e.g. `abcde.veo`): requests carry it
    /// as `EndpointId`, go to that global endpoint and are signed with
    /// SigV4a.
    #[arg(long, env = "UDP_AGENT_ENDPOINT_ID", value_name = "ID")]
    pub endpoint_id: Option<String>,

    /// PutEvents requests in flight at once (each holds up to 10 entries,
    /// its retries included); needed ≈ request rate × latency. When all are
    /// busy the sink stops taking batches and the queue absorbs, then drops
    /// and counts (`queue_drops`).
    #[arg(long, env = "UDP_AGENT_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,

    /// Client-side limit on PutEvents requests per second, retries included
    /// (0: none). The smallest Regional quota "PutEvents throttle limit in
    /// transactions per second" is 400/s (it is 10,000/s in us-east-1), and
    /// the quota is shared by the whole account; the default 300 with a
    /// burst of a tenth of a second stays under it everywhere. Raise it
    /// toward your Region's (or raised) quota for more throughput.
    #[arg(long, env = "UDP_AGENT_MAX_PUT_EVENTS_PER_SECOND",
          default_value_t = DEFAULT_MAX_PUT_EVENTS_PER_SECOND)]
    pub max_put_events_per_second: u32,

    /// Cost guard: most billed events sent in any rolling hour (measured in
    /// one-minute steps); past it, events are skipped and counted
    /// (`cost_guard_skipped`) and a warning is logged once a minute. Each
    /// started 64 KB of an entry is one billed event. The default,
    /// 1,000,000, caps spend at about US$1 an hour at the custom-event price
    /// of US$1.00 per million. 0 turns the guard off: then only the kernel
    /// rate limits and --max-put-events-per-second bound the bill.
    #[arg(long, env = "UDP_AGENT_MAX_EVENTS_PER_HOUR",
          default_value_t = DEFAULT_MAX_EVENTS_PER_HOUR)]
    pub max_events_per_hour: u64,

    /// Resends of a request or of its failed entries before they are given
    /// up (and dead-lettered). Unset (the default): resend until delivered
    /// or older than --spool-max-age. Throttling, 5xx, timeouts, connection
    /// errors and entries failed with ThrottlingException/InternalFailure
    /// are retried with capped exponential backoff and full jitter (base
    /// 100 ms, cap 10 s); anything else is not retried.
    #[arg(long, env = "UDP_AGENT_MAX_RETRIES")]
    pub max_retries: Option<u32>,

    /// Longest wait for one PutEvents attempt before it counts as a timeout
    /// (and is retried).
    #[arg(long, env = "UDP_AGENT_REQUEST_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// On shutdown, how long the sink may take to finish. Spooled batches
    /// stay in the spool for the next run (a request already sent gets this
    /// long for its answer); without a spool, what is queued or in flight is
    /// delivered until then, and whatever is left is counted
    /// (`undelivered`), logged, and written to --dead-letter with ErrorCode
    /// `DrainTimeout`. The stdout sink gets this long to write what it holds.
    #[arg(long, env = "UDP_AGENT_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Append entries that could not be delivered (refused by EventBridge,
    /// out of retries, or left at the drain timeout) to this file, one JSON
    /// line each:
    /// `{"Entry": <the entry as --sink stdout prints it>, "ErrorCode": …,
    /// "ErrorMessage": …}`.
    /// The file is created mode 0600 (it holds payloads).
    #[arg(long, env = "UDP_AGENT_DEAD_LETTER", value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,

    /// Most bytes the --dead-letter file grows to; then it is renamed to
    /// FILE.1 (replacing an older one) and a new one is started, so the two
    /// hold at most twice this. Accepts units: 256MiB, 1GB, 4096.
    #[arg(long, env = "UDP_AGENT_DEAD_LETTER_MAX_BYTES", default_value = "256MiB",
          value_parser = parse_bytes)]
    pub dead_letter_max_bytes: u64,
}

/// The disk spool in front of the EventBridge sink.
#[derive(Debug, Args)]
#[command(next_help_heading = "Spool (durable delivery)")]
pub struct SpoolArgs {
    /// Directory that holds every batch accepted from capture until
    /// EventBridge has it (or it is given up and dead-lettered), so that
    /// outages, throttling, restarts and crashes lose nothing. On whenever
    /// the EventBridge sink runs; `none` turns it off (then an outage longer
    /// than the in-memory queue loses events, and a restart loses what was
    /// queued). The stdout sink uses none. One directory per agent.
    #[arg(long, env = "UDP_AGENT_SPOOL_DIR", value_name = "DIR|none",
          default_value = DEFAULT_SPOOL_DIR)]
    pub spool_dir: PathBuf,

    /// When spooled data is forced to disk: `always` (fdatasync before a
    /// batch is sent; survives power loss), `interval` (every
    /// --spool-fsync-interval; power loss costs at most that), `never` (the
    /// kernel's writeback). All three survive SIGTERM, SIGKILL and crashes
    /// of the agent.
    #[arg(
        long,
        env = "UDP_AGENT_SPOOL_FSYNC",
        value_enum,
        default_value = "interval"
    )]
    pub spool_fsync: FsyncArg,

    /// The interval of `--spool-fsync interval`.
    #[arg(long, env = "UDP_AGENT_SPOOL_FSYNC_INTERVAL", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub spool_fsync_interval: Duration,

    /// Most bytes the spool holds on disk. Accepts units: 1GiB, 500MB.
    #[arg(long, env = "UDP_AGENT_SPOOL_MAX_BYTES", default_value = "1GiB",
          value_parser = parse_bytes)]
    pub spool_max_bytes: u64,

    /// Entries older than this (since capture) are no longer retried: they
    /// are given up with ErrorCode `SpoolMaxAge` and dead-lettered. Applies
    /// with --spool-dir none too.
    #[arg(long, env = "UDP_AGENT_SPOOL_MAX_AGE", default_value = "24h",
          value_parser = humantime::parse_duration)]
    pub spool_max_age: Duration,

    /// What goes when the spool is full: `drop-newest` refuses new batches
    /// and keeps what is spooled; `drop-oldest` deletes the oldest spooled
    /// batches to make room. Either way the drops are counted
    /// (`udp_agent_spool_dropped_entries_total`) and logged at a doubling
    /// interval.
    #[arg(
        long,
        env = "UDP_AGENT_SPOOL_FULL",
        value_enum,
        default_value = "drop-newest"
    )]
    pub spool_full: FullPolicy,
}

/// `--spool-fsync`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncArg {
    Always,
    Interval,
    Never,
}

impl SpoolArgs {
    /// The spool's settings, or `None` for `--spool-dir none`.
    pub fn settings(&self) -> Option<spool::Settings> {
        if self.spool_dir.as_os_str() == "none" {
            return None;
        }
        Some(spool::Settings {
            dir: self.spool_dir.clone(),
            fsync: match self.spool_fsync {
                FsyncArg::Always => FsyncPolicy::Always,
                FsyncArg::Interval => FsyncPolicy::Interval(self.spool_fsync_interval),
                FsyncArg::Never => FsyncPolicy::Never,
            },
            max_bytes: self.spool_max_bytes,
            full: self.spool_full,
        })
    }
}

/// A byte count, with or without units (`4096`, `64KiB`, `1 GiB`, `500MB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (e.g. 4096, 64KiB, 1GiB)"))
}

impl EventBridgeArgs {
    /// Checks that clap's types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.endpoint_id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(format!(
                "--endpoint-id {id:?} is not a global endpoint ID (letters, digits, '-' and '.', e.g. abcde.veo)"
            ));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "--endpoint-url {url:?} must start with http:// or https://"
            ));
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout must be more than 0".into());
        }
        if self.dead_letter_max_bytes < 64 * 1024 {
            return Err("--dead-letter-max-bytes must be at least 64KiB".into());
        }
        Ok(())
    }
}

impl RunArgs {
    /// The EventBridge sink's settings.
    pub fn eventbridge_settings(&self) -> Settings {
        let args = self;
        let a = &args.eventbridge;
        Settings {
            region: a.region.clone(),
            endpoint_url: a.endpoint_url.clone(),
            endpoint_id: a.endpoint_id.clone(),
            max_in_flight: a.max_in_flight as usize,
            max_requests_per_second: a.max_put_events_per_second,
            max_events_per_hour: a.max_events_per_hour,
            max_retries: a.max_retries,
            max_age: Some(args.spool.spool_max_age),
            backoff: Backoff::default(),
            request_timeout: a.request_timeout,
            drain_timeout: a.drain_timeout,
            dead_letter: a.dead_letter.clone(),
            dead_letter_max_bytes: a.dead_letter_max_bytes,
            max_request_bytes: args.max_entry_bytes as usize,
        }
    }
}

/// The flags' defaults, for callers that build a sink without flags (tests,
/// benchmarks).
impl Default for Settings {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            endpoint_id: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT as usize,
            max_requests_per_second: DEFAULT_MAX_PUT_EVENTS_PER_SECOND,
            max_events_per_hour: DEFAULT_MAX_EVENTS_PER_HOUR,
            max_retries: None,
            max_age: Some(DEFAULT_SPOOL_MAX_AGE),
            backoff: Backoff::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            dead_letter: None,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["udp-agent", "run", "--iface", "lo"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flag_defaults_match_settings_defaults() {
        let args = run_args(&[]);
        let s = args.eventbridge_settings();
        let d = Settings::default();
        assert_eq!(s.max_in_flight, 32);
        assert_eq!(s.max_requests_per_second, 300);
        assert_eq!(s.max_events_per_hour, 1_000_000);
        assert_eq!(s.max_retries, None);
        assert_eq!(s.max_age, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(s.max_age, d.max_age);
        assert_eq!(s.dead_letter_max_bytes, 256 << 20);
        assert_eq!(s.request_timeout, d.request_timeout);
        assert_eq!(s.drain_timeout, Duration::from_secs(10));
        assert_eq!(args.sink, crate::sink::SinkKind::Auto);
        assert_eq!(args.event_bus, None);
    }

    #[test]
    fn flags_reach_the_settings() {
        let args = run_args(&[
            "--sink",
            "eventbridge",
            "--event-bus",
            "orders",
            "--endpoint-url",
            "http://127.0.0.1:4010",
            "--endpoint-id",
            "abcde.veo",
            "--max-in-flight",
            "2",
            "--max-put-events-per-second",
            "0",
            "--max-events-per-hour",
            "0",
            "--max-retries",
            "3",
            "--request-timeout",
            "1500ms",
            "--drain-timeout",
            "2s",
            "--dead-letter",
            "/tmp/dead.ndjson",
        ]);
        args.validate().unwrap();
        let s = args.eventbridge_settings();
        assert_eq!(s.endpoint_url.as_deref(), Some("http://127.0.0.1:4010"));
        assert_eq!(s.endpoint_id.as_deref(), Some("abcde.veo"));
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(s.max_requests_per_second, 0);
        assert_eq!(s.max_events_per_hour, 0);
        assert_eq!(s.max_retries, Some(3));
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert_eq!(s.drain_timeout, Duration::from_secs(2));
        assert_eq!(s.dead_letter, Some(PathBuf::from("/tmp/dead.ndjson")));
        assert_eq!(args.event_bus.as_deref(), Some("orders"));
    }

    #[test]
    fn bad_values_are_refused_before_start() {
        assert!(run_args(&["--endpoint-id", "bad/id"]).validate().is_err());
        assert!(
            run_args(&["--endpoint-url", "127.0.0.1:4010"])
                .validate()
                .is_err()
        );
        assert!(run_args(&["--event-bus", ""]).validate().is_err());
        assert!(run_args(&["--request-timeout", "0s"]).validate().is_err());
        let argv = ["udp-agent", "run", "--iface", "lo", "--max-in-flight", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
