//! What the EventBridge sink is configured with ([`Settings`], built from
//! the flags by [`crate::config::sink`]), and the SDK client.
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

use super::{dead_letter::DeadLetter, retry::Backoff};
use crate::logging::error_chain;

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
