//! The fake speaks PutEvents' AWS JSON 1.1 protocol and injects its faults
//! as documented. Requests are written by hand over TCP, as bytes, so the
//! test checks the wire format rather than a client's view of it.

use std::time::Duration;

use fake_eventbridge::{Config, FakeEventBridge, Fault};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on a fresh connection; `None` if the server closed
/// it without answering.
async fn exchange(
    fake: &FakeEventBridge,
    method: &str,
    target: Option<&str>,
    body: &str,
) -> Option<Reply> {
    let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n",
        if method == "GET" { body } else { "/" },
        fake.addr(),
        if method == "GET" { 0 } else { body.len() },
    );
    if let Some(t) = target {
        request.push_str(&format!("x-amz-target: {t}\r\n"));
    }
    request.push_str("\r\n");
    if method != "GET" {
        request.push_str(body);
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the fake answered or closed within 10 s")
        .unwrap();
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Some(Reply {
        status,
        headers,
        body: serde_json::from_str(body).unwrap(),
    })
}

async fn put_events(fake: &FakeEventBridge, body: &Value) -> Option<Reply> {
    exchange(fake, "POST", Some("AWSEvents.PutEvents"), &body.to_string()).await
}

fn entry(detail: &str) -> Value {
    json!({
        "Source": "udp.raw",
        "DetailType": "UdpPacket",
        "Detail": detail,
        "Time": 1.795822397E9,
        "EventBusName": "default",
    })
}

#[tokio::test]
async fn accepts_entries_and_reports_them() {
    let fake = FakeEventBridge::start(Config::default()).await.unwrap();
    let body = json!({ "Entries": [entry(r#"{"n":1}"#), entry(r#"{"n":2}"#)] });
    let r = put_events(&fake, &body).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    assert_eq!(r.body["FailedEntryCount"], 0);
    let results = r.body["Entries"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|e| e["EventId"].is_string() && e.get("ErrorCode").is_none())
    );

    let mut accepted = fake.accepted();
    accepted.sort_by(|a, b| a.detail.cmp(&b.detail));
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0].detail, r#"{"n":1}"#);
    assert_eq!(accepted[0].source, "udp.raw");
    assert_eq!(accepted[0].time, Some(1_795_822_397.0));
    assert_eq!(accepted[0].accepted, 1);

    // The same over HTTP.
    let listed = exchange(&fake, "GET", None, "/_accepted").await.unwrap();
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
    let stats = exchange(&fake, "GET", None, "/_stats").await.unwrap();
    assert_eq!(stats.body["requests"], 1);
    assert_eq!(stats.body["entries_accepted"], 2);
}

#[tokio::test]
async fn refuses_malformed_entries_one_by_one() {
    let fake = FakeEventBridge::start(Config::default()).await.unwrap();
    let body = json!({ "Entries": [
        entry(r#"{"ok":true}"#),
        entry("not json"),
        { "Source": "udp.raw", "Detail": "{}" },
    ]});
    let r = put_events(&fake, &body).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["FailedEntryCount"], 2);
    let e = &r.body["Entries"];
    assert!(e[0]["EventId"].is_string());
    assert_eq!(e[1]["ErrorCode"], "MalformedDetail");
    assert_eq!(e[2]["ErrorCode"], "InvalidArgument");
    assert!(e[2]["ErrorMessage"].is_string());
}

#[tokio::test]
async fn refuses_requests_beyond_aws_limits() {
    let fake = FakeEventBridge::start(Config::default()).await.unwrap();
    let eleven: Vec<Value> = (0..11).map(|i| entry(&format!("{{\"n\":{i}}}"))).collect();
    let r = put_events(&fake, &json!({ "Entries": eleven }))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["__type"], "ValidationException");

    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(130 * 1024));
    let r = put_events(&fake, &json!({ "Entries": [entry(&big), entry(&big)] }))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["__type"], "ValidationException");

    let r = exchange(&fake, "POST", Some("AWSEvents.ListRules"), "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["__type"], "UnknownOperationException");
    assert!(fake.accepted().is_empty());
    assert_eq!(fake.stats().invalid_requests, 3);
}

#[tokio::test]
async fn whole_request_faults_by_request_number() {
    let fake = FakeEventBridge::start(Config {
        drop_every: 2,
        throttle_every: 3,
        internal_error_every: 5,
        ..Config::default()
    })
    .await
    .unwrap();
    let body = json!({ "Entries": [entry("{}")] });
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(put_events(&fake, &body).await.map(|r| {
            let kind = r.header("x-amzn-errortype").map(str::to_owned);
            if let Some(kind) = &kind {
                assert_eq!(r.body["__type"], kind.as_str());
            }
            (r.status, kind)
        }));
    }
    let throttled = Some((400, Some("ThrottlingException".to_owned())));
    let internal = Some((500, Some("InternalFailure".to_owned())));
    let ok = Some((200, None));
    // 1 ok, 2 dropped, 3 throttled, 4 dropped, 5 internal, 6 dropped (drop
    // wins over throttle).
    assert_eq!(seen, [ok, None, throttled, None, internal, None]);
    let s = fake.stats();
    assert_eq!(
        (s.requests, s.dropped, s.throttled, s.internal_errors),
        (6, 3, 1, 1)
    );
    assert_eq!(s.entries_accepted, 1);
}

#[tokio::test]
async fn entry_faults_are_predictable_and_retryable_ones_pass_later() {
    let config = Config {
        seed: 9,
        retryable_fraction: 0.3,
        permanent_fraction: 0.3,
        retryable_attempts: 2,
        ..Config::default()
    };
    let fake = FakeEventBridge::start(config.clone()).await.unwrap();
    let details: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let body = json!({ "Entries": details.iter().map(|d| entry(d)).collect::<Vec<_>>() });
    for round in 0..3 {
        let r = put_events(&fake, &body).await.unwrap();
        for (i, d) in details.iter().enumerate() {
            let result = &r.body["Entries"][i];
            match config.entry_fault(d) {
                Some(Fault::Permanent(code)) => assert_eq!(result["ErrorCode"], code),
                Some(Fault::Retryable(code)) if round < 2 => {
                    assert_eq!(result["ErrorCode"], code)
                }
                _ => assert!(result["EventId"].is_string(), "{d} round {round}"),
            }
        }
    }
    for r in fake.records() {
        let expected = match config.entry_fault(&r.detail) {
            Some(Fault::Permanent(_)) => (0, 3),
            Some(Fault::Retryable(_)) => (1, 2),
            None => (3, 0),
        };
        assert_eq!((r.accepted, r.rejected), expected, "{}", r.detail);
    }
}

#[tokio::test]
async fn answers_after_the_delay() {
    let fake = FakeEventBridge::start(Config {
        delay: Duration::from_millis(200),
        ..Config::default()
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = put_events(&fake, &json!({ "Entries": [entry("{}")] }))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_detail_must_be_one_json_object() {
    let fake = FakeEventBridge::start(Config::default()).await.unwrap();
    let details = [
        (r#"[1]"#, false),
        (r#"{"a":1} x"#, false),
        (r#"{"a":"#, false),
        (r#"  {"Payload":1}"#, true),
        (r#"{"Payload":"a","Payload":"b"}"#, true),
        (r#"{"Payload":null,"x":[{"y":"\u00e9"}]}"#, true),
    ];
    let body = json!({ "Entries": details.iter().map(|(d, _)| entry(d)).collect::<Vec<_>>() });
    let r = put_events(&fake, &body).await.unwrap();
    for (i, (detail, valid)) in details.iter().enumerate() {
        let result = &r.body["Entries"][i];
        if *valid {
            assert!(result["EventId"].is_string(), "{detail}: {result}");
        } else {
            assert_eq!(result["ErrorCode"], "MalformedDetail", "{detail}");
        }
    }
}

#[tokio::test]
async fn records_the_latency_of_stamped_entries_it_accepts() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use fake_eventbridge::latency::stamp;

    let age = Duration::from_millis(50);
    let stamped = |seq: u64| {
        let mut payload = vec![b'x'; 64];
        stamp::write(
            &mut payload,
            stamp::monotonic_ns() - age.as_nanos() as u64,
            seq,
        );
        json!({ "Payload": STANDARD.encode(&payload) }).to_string()
    };
    let unstamped = json!({ "Payload": STANDARD.encode(b"no stamp here, long enough to decode") });
    let body = json!({ "Entries": [
        entry(&stamped(1)),
        entry(&stamped(2)),
        entry(&unstamped.to_string()),
    ]});

    let fake = FakeEventBridge::start(Config {
        record: false,
        record_latency: true,
        ..Config::default()
    })
    .await
    .unwrap();
    assert_eq!(put_events(&fake, &body).await.unwrap().status, 200);
    let latency = fake.latency();
    assert_eq!(latency.samples, 2, "{latency:?}");
    assert_eq!(fake.stats().entries_stamped, 2);
    // Sent `age` before the request: no less than that (the histogram's
    // buckets are within a few percent).
    assert!(
        latency.p50_ns >= 0.95 * age.as_nanos() as f64,
        "{latency:?}"
    );
    assert!(fake.records().is_empty(), "counters only");
    fake.reset_latency();
    assert_eq!(fake.latency().samples, 0);

    // Without record_latency nothing is timed.
    let fake = FakeEventBridge::start(Config::default()).await.unwrap();
    assert_eq!(put_events(&fake, &body).await.unwrap().status, 200);
    assert_eq!(fake.latency().samples, 0);
    assert_eq!(fake.stats().entries_stamped, 0);
}

#[test]
fn the_blocking_fake_serves_pauses_and_resumes_on_its_own_runtime() {
    use std::net::TcpStream as StdStream;

    let mut fake = fake_eventbridge::blocking::FakeEventBridge::start(Config::default()).unwrap();
    let addr = fake.addr();
    assert_eq!(fake.url(), format!("http://{addr}"));
    StdStream::connect(addr).expect("listening");
    fake.pause();
    assert!(StdStream::connect(addr).is_err(), "refused while paused");
    fake.resume().unwrap();
    StdStream::connect(addr).expect("listening again");
    assert_eq!(fake.stats().requests, 0);
}
