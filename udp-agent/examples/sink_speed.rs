//! The EventBridge sink's cost per PutEvents request, for profiling.
//!
//! Starts `fake-eventbridge` (counters only) in a child process, builds the
//! sink exactly as `udp-agent run --sink eventbridge --endpoint-url URL
//! --region us-east-1 --max-put-events-per-second 0 --max-events-per-hour 0`
//! does (static test credentials), pushes N batches of 10 realistic entries
//! (64-byte payloads) and prints requests/s, events/s and this process's CPU
//! time per request. Extra arguments are passed to `udp-agent run`, e.g.
//! `--max-in-flight 32`.
//!
//! ```text
//! cargo build --release -p udp-agent --example sink_speed
//! N=20000 target/release/examples/sink_speed
//! N=2000 valgrind --tool=callgrind target/release/examples/sink_speed
//! ```
//!
//! Valgrind does not follow the child, so the profile is the client's
//! alone; instructions (unlike time) are stable on a busy machine. `WARM`
//! batches (default 200) are sent before the measurement starts so that
//! connection set-up and first-use costs stay out of the per-request numbers
//! (under callgrind, compare two N to subtract them). Callgrind's CPU has
//! no SHA extensions, so SHA-256 (the body hash of SigV4) weighs far more
//! there than on the real CPU, where it runs at about 1 ns per byte.
//!
//! Numbers on the 2-CPU benchmark machine, busy, N=20000 (µs of CPU per
//! request of 10 entries; instructions per request under callgrind, SHA-256
//! aside): through the SDK's orchestrator, ~240 µs and ~470,000; with the
//! direct path (`sink/eventbridge/direct.rs`), ~55 µs and ~125,000; with
//! the sink on its own thread, ~42 µs.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use clap::Parser;
use fake_eventbridge::{Config, FakeEventBridge};
use tokio::sync::{mpsc, watch};
use udp_agent::{
    config::{Cli, Command as AgentCommand},
    encode::Entry,
    sink::eventbridge::{self, EventBridgeSink},
    stats::PipelineStats,
};

const ENTRIES_PER_BATCH: usize = 10;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        serve();
        return;
    }
    let n: usize = env_or("N", 20_000);
    let warm: usize = env_or("WARM", 200);
    let (mut child, url) = spawn_endpoint();
    let extra: Vec<String> = std::env::args().skip(1).collect();
    // The agent's runtime: two workers, as `udp-agent run` builds it
    // (`RT=current`: one thread, for comparison).
    let rt = if std::env::var("RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("runtime");
    let result = rt.block_on(measure(&url, &extra, n, warm));
    let _ = child.kill();
    let _ = child.wait();
    let (elapsed, (user, sys), delivered) = result;
    let cpu = user + sys;
    let requests = n as f64;
    println!(
        "{n} requests of {ENTRIES_PER_BATCH} entries: {:.0} requests/s, {:.0} events/s, {:.1} µs CPU/request, {:.2} µs CPU/event ({:.1} user + {:.1} sys µs/request; wall {:.2}s, delivered {delivered})",
        requests / elapsed.as_secs_f64(),
        requests * ENTRIES_PER_BATCH as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / requests,
        cpu.as_secs_f64() * 1e6 / (requests * ENTRIES_PER_BATCH as f64),
        user.as_secs_f64() * 1e6 / requests,
        sys.as_secs_f64() * 1e6 / requests,
        elapsed.as_secs_f64(),
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Wall time, this process's (user, system) CPU time, entries delivered in
/// the measured part.
async fn measure(
    url: &str,
    extra: &[String],
    n: usize,
    warm: usize,
) -> (Duration, (Duration, Duration), u64) {
    // SAFETY: set before any other thread of ours reads the environment
    // (the runtime's workers do not).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "benchmark-secret");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/sink_speed");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/sink_speed");
    }
    let mut argv: Vec<String> = [
        "udp-agent",
        "run",
        "--iface",
        "lo",
        "--sink",
        "eventbridge",
        "--endpoint-url",
        url,
        "--region",
        "us-east-1",
        "--max-put-events-per-second",
        "0",
        "--max-events-per-hour",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend_from_slice(extra);
    let AgentCommand::Run(args) = Cli::parse_from(argv).command else {
        unreachable!("a run command line")
    };
    args.validate().expect("valid flags");
    // The agent's logger too (the benchmark runs it with RUST_LOG=info):
    // the SDK's tracing spans cost what the filter makes them cost.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("RUST_LOG", "info") };
    }
    udp_agent::logging::init(&args.log).expect("logger");
    let settings = args.eventbridge_settings();
    let client = settings.connect().await.expect("connecting");
    let pipeline = Arc::new(PipelineStats::default());
    let sink = EventBridgeSink::new(settings, client, pipeline).expect("sink");
    let stats = sink.counters();
    // The pipeline's batch queue is small; this one only has to keep the
    // sink busy.
    let (tx, rx) = mpsc::channel::<Vec<Entry>>(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let sink_task = tokio::spawn(eventbridge::run(
        sink,
        udp_agent::pipeline::in_memory(rx),
        stop_rx,
    ));

    let template = batch(0);
    for _ in 0..warm {
        tx.send(template.clone()).await.expect("sink running");
    }
    let want = (warm * ENTRIES_PER_BATCH) as u64;
    while stats.delivered.load(Relaxed) + stats.failed.load(Relaxed) < want {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (t0, cpu0) = (Instant::now(), cpu_time());
    for _ in 0..n {
        tx.send(template.clone()).await.expect("sink running");
    }
    drop(tx);
    sink_task.await.expect("sink task");
    let cpu1 = cpu_time();
    let (elapsed, cpu) = (t0.elapsed(), (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1));
    let delivered = stats.delivered.load(Relaxed) - want;
    let failed = stats.failed.load(Relaxed) + stats.undelivered.load(Relaxed);
    assert_eq!(failed, 0, "entries failed");
    assert_eq!(delivered, (n * ENTRIES_PER_BATCH) as u64);
    (elapsed, cpu, delivered)
}

/// Ten entries as the encoder makes them for a 64-byte datagram to port 514.
fn batch(seq: u64) -> Vec<Entry> {
    let source: Arc<str> = Arc::from("udp.raw");
    let detail_type: Arc<str> = Arc::from("UdpPacket");
    let bus: Arc<str> = Arc::from("default");
    (0..ENTRIES_PER_BATCH as u64)
        .map(|i| {
            let mut payload = [0u8; 64];
            payload[..8].copy_from_slice(&(seq + i).to_le_bytes());
            let detail = format!(
                r#"{{"Destination":{{"Address":"198.18.0.1","Port":514}},"Source":{{"Address":"198.18.0.2","Port":40000}},"Payload":"{}","Length":64,"Truncated":false,"Interface":"veth0","IpVersion":4}}"#,
                STANDARD.encode(payload)
            );
            Entry {
                source: source.clone(),
                detail_type: detail_type.clone(),
                event_bus_name: bus.clone(),
                detail: detail.into(),
                time: SystemTime::now(),
                capture_ns: 0,
            }
        })
        .collect()
}

/// (user, system).
fn cpu_time() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Re-runs this binary as `sink_speed serve`: a fake endpoint in its own
/// process, so that it is neither profiled nor timed with the client.
fn spawn_endpoint() -> (Child, String) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the endpoint");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("endpoint address");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected endpoint output: {line:?}"))
        .to_owned();
    (child, url)
}

fn serve() {
    #[derive(Parser)]
    struct Args {
        #[arg(long, default_value_t = 2)]
        workers: usize,
    }
    let args = Args::parse_from(std::env::args().skip(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = FakeEventBridge::start(Config {
            record: false,
            ..Config::default()
        })
        .await
        .expect("listening");
        println!("listening on {}", fake.url());
        std::future::pending::<()>().await;
    });
}
