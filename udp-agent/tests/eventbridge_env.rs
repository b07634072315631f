//! The EventBridge sink configured the way an operator does it: Region and
//! credentials from the standard AWS chain (here the environment), the
//! endpoint from `--endpoint-url` or `AWS_ENDPOINT_URL`.
//!
//! This file holds exactly one test because it changes the process
//! environment; as the only test of its binary nothing runs beside it.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use fake_eventbridge::{Config as FakeConfig, FakeEventBridge};
use tokio::sync::{mpsc, watch};
use udp_agent::{
    encode::Entry,
    sink::{
        Delivery,
        eventbridge::{self, ConfigError, EventBridgeSink, Settings},
    },
    stats::PipelineStats,
};

fn set(key: &str, value: &str) {
    // SAFETY: this binary's only test runs on the main test thread before
    // any other thread of ours reads the environment; the runtime's worker
    // threads only read it through the SDK, after these calls.
    unsafe { std::env::set_var(key, value) };
}

fn unset(key: &str) {
    // SAFETY: as in `set`.
    unsafe { std::env::remove_var(key) };
}

fn entry(n: u32) -> Entry {
    Entry {
        source: Arc::from("udp.raw"),
        detail_type: Arc::from("UdpPacket"),
        event_bus_name: Arc::from("default"),
        detail: format!("{{\"n\":{n}}}").into(),
        // Recent: entries older than --spool-max-age are not sent.
        time: SystemTime::now(),
        capture_ns: 0,
    }
}

/// Sends one batch through a sink built by `Settings::connect`.
async fn send_one_batch(settings: Settings, first: u32) -> u64 {
    let pipeline = Arc::new(PipelineStats::default());
    let client = settings
        .connect()
        .await
        .expect("configuration from the environment");
    let sink = EventBridgeSink::new(settings, client, pipeline).unwrap();
    let stats = sink.counters();
    let (tx, rx) = mpsc::channel(1);
    let (_stop_tx, stop_rx) = watch::channel(false);
    tx.send(Delivery::in_memory((first..first + 3).map(entry).collect()))
        .await
        .unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), eventbridge::run(sink, rx, stop_rx))
        .await
        .expect("the sink finished");
    stats.delivered.load(Relaxed)
}

#[test]
fn region_and_credentials_come_from_the_standard_chain() {
    // Nothing from the machine running the test may leak in: no profile
    // files, no instance metadata, no ambient credentials or Region.
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EVENTBRIDGE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        unset(key);
    }
    set("AWS_EC2_METADATA_DISABLED", "true");
    set("AWS_CONFIG_FILE", "/nonexistent/udp-agent-test/config");
    set(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/udp-agent-test/credentials",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeEventBridge::start(FakeConfig::default()).await.unwrap();
        let with_endpoint = Settings {
            endpoint_url: Some(fake.url()),
            ..Settings::default()
        };

        // No Region anywhere: a start-up error that says what to do.
        let err = with_endpoint.connect().await.unwrap_err();
        assert!(matches!(err, ConfigError::NoRegion), "{err}");
        assert!(err.to_string().contains("AWS_REGION"), "{err}");

        // A Region but no credentials: likewise.
        set("AWS_REGION", "us-east-1");
        let err = with_endpoint.connect().await.unwrap_err();
        assert!(matches!(err, ConfigError::NoCredentials(_)), "{err}");
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");

        // Static credentials from the environment and --endpoint-url: the
        // setup of the moto-based network tests.
        set("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTESTTEST");
        set("AWS_SECRET_ACCESS_KEY", "test-secret");
        assert_eq!(send_one_batch(with_endpoint.clone(), 0).await, 3);

        // --region overrides the chain's Region.
        let other_region = Settings {
            region: Some("eu-south-1".into()),
            ..with_endpoint
        };
        assert_eq!(send_one_batch(other_region, 10).await, 3);

        // AWS_ENDPOINT_URL stands in for --endpoint-url.
        set("AWS_ENDPOINT_URL", &fake.url());
        assert_eq!(send_one_batch(Settings::default(), 20).await, 3);

        let accepted = fake.accepted();
        assert_eq!(accepted.len(), 9);
        assert!(accepted.iter().all(|e| e.accepted == 1));
        assert_eq!(fake.stats().requests, 3);
    });
}
