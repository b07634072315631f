//! The EventBridge sink configured the way an operator does it: Region and
//! credentials from the standard AWS chain (the environment, then an EC2
//! instance role through IMDSv2), the endpoint from `--endpoint-url` or
//! `AWS_ENDPOINT_URL`.
//!
//! This file holds exactly one test because it changes the process
//! environment; as the only test of its binary nothing runs beside it. Its
//! phases run in order.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_smithy_types::date_time::{DateTime, Format};
use fake_eventbridge::{Config as FakeConfig, FakeEventBridge};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
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

        instance_role_credentials_near_expiry().await;
    });
}

/// An EC2 instance role whose credentials are inside the five-minute
/// refresh window and still served unchanged by IMDS (as before IMDS
/// rotates them): requests go on signing with them while one background
/// refresh asks IMDS on a backoff, not once per request; and rotated
/// credentials are picked up without a failed request.
async fn instance_role_credentials_near_expiry() {
    let imds = StandIn::start().await;
    imds.serve_credentials("ASIAOLDOLDOLDOLDOLD1", Duration::from_secs(150));
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        unset(key);
    }
    set("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url());

    let settings = Settings {
        endpoint_url: Some(imds.url()),
        // As fast as the endpoint answers: the more requests, the more a
        // fetch per request would show.
        max_requests_per_second: 0,
        ..Settings::default()
    };
    let client = settings
        .connect()
        .await
        .expect("instance-role credentials from the IMDS stand-in");
    let sink = EventBridgeSink::new(settings, client, Arc::new(PipelineStats::default())).unwrap();
    let stats = sink.counters();
    let (tx, rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let sink = tokio::spawn(eventbridge::run(sink, rx, stop_rx));
    let delivered = |n: u64| {
        let stats = stats.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while stats.delivered.load(Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "{} of {n} entries delivered",
                    stats.delivered.load(Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // 400 requests of one entry each.
    const BURST: u64 = 400;
    let fetches_before = imds.role_fetches();
    let started = Instant::now();
    for n in 0..BURST {
        tx.send(Delivery::in_memory(vec![entry(1_000 + n as u32)]))
            .await
            .unwrap();
    }
    delivered(BURST).await;
    let elapsed = started.elapsed();
    let fetches = imds.role_fetches() - fetches_before;
    let signed = imds.signed_with();
    println!(
        "{} PutEvents requests in {elapsed:?} with credentials 150 s from expiry: {fetches} IMDS credential fetches",
        signed.len(),
    );
    assert!(signed.len() as u64 >= BURST, "{} requests", signed.len());
    assert!(
        signed.iter().all(|k| k == "ASIAOLDOLDOLDOLDOLD1"),
        "signed with {:?}",
        signed.iter().collect::<std::collections::BTreeSet<_>>()
    );
    // The SDK's first request and the direct path's first one each fetch
    // once; background attempts wait 1-2 s, then 2-4 s, 4-8 s… apart. One
    // fetch per request would be 400.
    assert!(
        fetches <= 10,
        "{fetches} IMDS credential fetches for {BURST} requests"
    );

    // IMDS rotates: the next background attempt takes the new keys, and
    // requests go on meanwhile, none failing.
    imds.serve_credentials("ASIANEWNEWNEWNEWNEW2", Duration::from_secs(3600));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sent = BURST;
    while !imds
        .signed_with()
        .iter()
        .any(|k| k == "ASIANEWNEWNEWNEWNEW2")
    {
        assert!(
            Instant::now() < deadline,
            "rotated credentials unused after 90 s"
        );
        tx.send(Delivery::in_memory(vec![entry(1_000 + sent as u32)]))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delivered(sent).await;
    // Valid for an hour: no more fetches.
    let fetches = imds.role_fetches();
    for n in 0..100 {
        tx.send(Delivery::in_memory(vec![entry(100_000 + n)]))
            .await
            .unwrap();
    }
    sent += 100;
    delivered(sent).await;
    assert_eq!(imds.role_fetches(), fetches);
    assert_eq!(imds.signed_with().last().unwrap(), "ASIANEWNEWNEWNEWNEW2");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), sink)
        .await
        .expect("the sink finished")
        .unwrap();
    assert_eq!(stats.delivered.load(Relaxed), sent);
    assert_eq!(stats.failed.load(Relaxed), 0);
    assert_eq!(stats.retried.load(Relaxed), 0);
}

/// The role name the stand-in's instance has.
const ROLE: &str = "udp-agent-role";

/// IMDSv2 (a session token, the instance's role, its credentials) and a
/// PutEvents endpoint that accepts every entry and notes the access key
/// each request was signed with, on loopback.
struct StandIn {
    addr: SocketAddr,
    state: Arc<StandInState>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct StandInState {
    /// (access key ID, expiry) of the role credentials served.
    credentials: Mutex<(String, u64)>,
    role_fetches: AtomicU64,
    signed_with: Mutex<Vec<String>>,
}

impl StandIn {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(StandInState::default());
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Self {
            addr,
            state,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves credentials with this key that expire `valid` from now.
    fn serve_credentials(&self, key: &str, valid: Duration) {
        let expiry = (SystemTime::now() + valid)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        *self.state.credentials.lock().unwrap() = (key.to_owned(), expiry);
    }

    fn role_fetches(&self) -> u64 {
        self.state.role_fetches.load(Relaxed)
    }

    fn signed_with(&self) -> Vec<String> {
        self.state.signed_with.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// HTTP/1.1 with keep-alive, one request at a time per connection.
async fn serve(stream: TcpStream, state: Arc<StandInState>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let mut lines = head.lines();
        let mut start = lines.next().unwrap_or_default().split_whitespace();
        let (method, path) = (
            start.next().unwrap_or_default(),
            start.next().unwrap_or_default(),
        );
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let token = header("x-aws-ec2-metadata-token").is_some();
        let role_path = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
        let (status, extra, reply) = match (method, path) {
            ("PUT", "/latest/api/token") => (
                200,
                "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                "stand-in-session-token".to_owned(),
            ),
            (_, p) if p.starts_with("/latest/") && !token => (401, "", String::new()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "", ROLE.to_owned()),
            ("GET", p) if p == role_path => {
                state.role_fetches.fetch_add(1, Relaxed);
                let (key, expiry) = state.credentials.lock().unwrap().clone();
                let expiration = DateTime::from_secs(expiry as i64)
                    .fmt(Format::DateTime)
                    .unwrap();
                let json = serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": DateTime::from(SystemTime::now()).fmt(Format::DateTime).unwrap(),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": key,
                    "SecretAccessKey": "stand-in-secret",
                    "Token": "stand-in-session",
                    "Expiration": expiration,
                });
                (200, "", json.to_string())
            }
            ("POST", "/") => {
                let auth = header("authorization").unwrap_or_default();
                let key = auth
                    .split("Credential=")
                    .nth(1)
                    .and_then(|c| c.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                state.signed_with.lock().unwrap().push(key);
                let entries = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["Entries"].as_array().map(Vec::len))
                    .unwrap_or(0);
                let results: Vec<serde_json::Value> = (0..entries)
                    .map(|i| serde_json::json!({"EventId": format!("stand-in-{i}")}))
                    .collect();
                let json = serde_json::json!({"FailedEntryCount": 0, "Entries": results});
                (
                    200,
                    "content-type: application/x-amz-json-1.1\r\n",
                    json.to_string(),
                )
            }
            _ => (404, "", String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{reply}",
            reply.len()
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
