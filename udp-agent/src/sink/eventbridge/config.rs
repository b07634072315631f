//! From flags to a configured sink: [`Settings`], and the SDK client.
//!
//! Region and credentials come from the standard AWS chain and are checked
//! once, at start-up ([`Settings::connect`]): a missing Region or missing
//! credentials stop the agent with a message saying how to provide them,
//! rather than failing every request later.

use std::{path::PathBuf, time::Duration};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_eventbridge::{
    Client,
    config::{
        ProvideCredentials, SharedCredentialsProvider, retry::RetryConfig, timeout::TimeoutConfig,
    },
};
use thiserror::Error;
use tracing::info;

use super::{
    dead_letter::{self, DeadLetter},
    retry::Backoff,
};
use crate::cli::RunArgs;
use crate::loader::error_chain;

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
/// Longest wait for the credential chain at start-up (IMDS included).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connect timeout of each attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the EventBridge sink needs besides the client.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Region override; `None`: the standard chain.
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Global endpoint ID sent as `EndpointId`.
    pub endpoint_id: Option<String>,
    pub max_in_flight: usize,
    /// Requests per second; 0: no client-side limit.
    pub max_requests_per_second: u32,
    /// Billed events per rolling hour; 0: no cost guard.
    pub max_events_per_hour: u64,
    /// Resends before giving up; `None`: until delivered or `max_age`.
    pub max_retries: Option<u32>,
    /// Entries older than this are given up (`SpoolMaxAge`); `None`: never.
    pub max_age: Option<Duration>,
    pub backoff: Backoff,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    pub dead_letter: Option<PathBuf>,
    pub dead_letter_max_bytes: u64,
    /// Bytes per request (`--max-entry-bytes`).
    pub max_request_bytes: usize,
}

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
            max_age: Some(crate::spool::DEFAULT_MAX_AGE),
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            dead_letter: None,
            dead_letter_max_bytes: dead_letter::DEFAULT_MAX_BYTES,
            max_request_bytes: super::MAX_REQUEST_BYTES,
        }
    }
}

/// The SDK client, and the credential chain it was built with: the sink's
/// direct path ([`super::direct`]) signs with the same credentials.
#[derive(Clone, Debug)]
pub struct Connection {
    pub client: Client,
    pub credentials: Option<SharedCredentialsProvider>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "no AWS Region configured: set AWS_REGION (or a profile's `region`), pass --region, run on EC2 (the Region comes from IMDS), or use --sink stdout for a dry run"
    )]
    NoRegion,
    #[error(
        "no AWS credentials: {0}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), name a profile with AWS_PROFILE, attach an instance role when running on EC2 (read through IMDSv2), or use --sink stdout for a dry run. Note that sudo drops AWS_* variables unless told to keep them (sudo --preserve-env=…)"
    )]
    NoCredentials(String),
    #[error("opening the dead-letter file {path}: {source}")]
    DeadLetter {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Settings {
    pub fn from_args(args: &RunArgs) -> Self {
        let a = &args.eventbridge;
        Self {
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

    /// Loads the standard AWS configuration chain, checks that it yields a
    /// Region and credentials, and builds the client.
    pub async fn connect(&self) -> Result<Connection, ConfigError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let region = sdk.region().ok_or(ConfigError::NoRegion)?.clone();
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| ConfigError::NoCredentials("no credential provider".into()))?;
        tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| {
                ConfigError::NoCredentials(format!(
                    "the credential chain gave no answer in {}",
                    humantime::format_duration(CREDENTIALS_TIMEOUT)
                ))
            })?
            .map_err(|e| ConfigError::NoCredentials(error_chain(&e)))?;
        info!(
            region = %region,
            endpoint = self.endpoint_url.as_deref().unwrap_or("(the Region's)"),
            "EventBridge credentials resolved"
        );
        Ok(self.client(&sdk))
    }

    /// Builds the client from an already loaded configuration (tests pass
    /// one with static credentials), applying this sink's endpoint and
    /// timeouts. The SDK's own retries are off: the sink retries, per entry,
    /// and counts what it does.
    pub fn client(&self, sdk: &SdkConfig) -> Connection {
        let mut config = aws_sdk_eventbridge::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(self.request_timeout)
                    .build(),
            );
        if let Some(url) = &self.endpoint_url {
            config = config.endpoint_url(url);
        }
        Connection {
            client: Client::from_conf(config.build()),
            credentials: sdk.credentials_provider(),
        }
    }

    /// Opens the dead-letter file, if one is configured.
    pub fn open_dead_letter(&self) -> Result<Option<DeadLetter>, ConfigError> {
        self.dead_letter
            .as_deref()
            .map(|path| {
                DeadLetter::open(path, self.dead_letter_max_bytes).map_err(|source| {
                    ConfigError::DeadLetter {
                        path: path.to_owned(),
                        source,
                    }
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(extra: &[&str]) -> crate::cli::RunArgs {
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
        let s = Settings::from_args(&args);
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
        let s = Settings::from_args(&args);
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
