//! `fake-eventbridge`: serve a fault-injecting PutEvents endpoint until
//! SIGINT/SIGTERM. Prints `listening on http://ADDR` on stdout once ready.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use fake_eventbridge::{Config, FakeEventBridge};
use tokio::signal::unix::{SignalKind, signal};

/// A fake Amazon EventBridge PutEvents endpoint (AWS JSON 1.1) that injects
/// faults deterministically. Point a client at it with
/// `--endpoint-url http://ADDR` and any credentials.
#[derive(Debug, Parser)]
#[command(name = "fake-eventbridge", version)]
struct Args {
    /// Address to listen on (port 0: any free port). Loopback only by
    /// default.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Seed of the per-entry fault hash (over each entry's Detail).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Throttle every K-th request whole (HTTP 400 ThrottlingException); 0:
    /// never.
    #[arg(long, default_value_t = 0)]
    throttle_every: u64,
    /// Answer every K-th request with HTTP 500 InternalFailure; 0: never.
    #[arg(long, default_value_t = 0)]
    internal_error_every: u64,
    /// Close the connection unanswered on every K-th request; 0: never.
    #[arg(long, default_value_t = 0)]
    drop_every: u64,
    /// Delay before each answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Fraction of entries refused with ThrottlingException/InternalFailure
    /// the first --retryable-attempts times they are sent.
    #[arg(long, default_value_t = 0.0)]
    retryable_fraction: f64,
    /// Refusals before an entry with a retryable fault is accepted.
    #[arg(long, default_value_t = 1)]
    retryable_attempts: u32,
    /// Fraction of entries always refused with InvalidArgument/MalformedDetail.
    #[arg(long, default_value_t = 0.0)]
    permanent_fraction: f64,
    /// Keep counters only, not every entry (for long benchmarks).
    #[arg(long)]
    no_record: bool,
    /// Answer every K-th request 200 with a body cut short (after taking
    /// its entries); 0: never.
    #[arg(long, default_value_t = 0)]
    unreadable_every: u64,
    /// A quota of requests per second shared by every client, like the
    /// account-wide PutEvents quota: requests over it are throttled whole
    /// (HTTP 400 ThrottlingException). 0: none.
    #[arg(long, default_value_t = 0)]
    quota: u64,
    /// Requests the quota lets through at once (0: a tenth of a second's
    /// worth).
    #[arg(long, default_value_t = 0)]
    quota_burst: u64,
    /// Record the send-to-acknowledged latency of entries whose payload
    /// carries a send time stamped by udp-bench's sender; the quantiles are
    /// printed with the counters on exit.
    #[arg(long)]
    record_latency: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        seed: args.seed,
        throttle_every: args.throttle_every,
        internal_error_every: args.internal_error_every,
        drop_every: args.drop_every,
        delay: Duration::from_millis(args.delay_ms),
        retryable_fraction: args.retryable_fraction,
        retryable_attempts: args.retryable_attempts,
        permanent_fraction: args.permanent_fraction,
        record: !args.no_record,
        unreadable_every: args.unreadable_every,
        quota_per_second: args.quota,
        quota_burst: args.quota_burst,
        record_latency: args.record_latency,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let fake = match FakeEventBridge::start(config).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: listening on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        println!("listening on {}", fake.url());
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("error: installing signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "{}",
            serde_json::to_string(&fake.stats()).expect("serialising counters cannot fail")
        );
        if args.record_latency {
            eprintln!(
                "{}",
                serde_json::to_string(&fake.latency()).expect("serialising quantiles cannot fail")
            );
        }
        ExitCode::SUCCESS
    })
}
