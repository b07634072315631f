//! The Prometheus endpoint (`--metrics-addr`): `GET /metrics`, beside the
//! health check `GET /healthz` ([`crate::health`]), which `--health-addr`
//! serves alone. Any other path is 404.
//!
//! Nothing is counted twice for it. Every value is read when Prometheus
//! scrapes, from where it already lives: the kernel's per-CPU counters and
//! per-port state (through the pinned maps), the pipeline's and the
//! EventBridge sink's atomics, and the interface table of the hot-plug
//! watcher. [`AgentCollector`] is a `prometheus_client` collector that reads
//! them; `prometheus_client` writes the exposition format (OpenMetrics for
//! Prometheus, which asks for it; the classic 0.0.4 text format for
//! everyone else, e.g. `curl`).
//!
//! The one metric measured here is [`Latency`], a histogram of the seconds
//! from capture in the kernel to the sink's acknowledgement.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `udp_agent_kernel_packets_total` | counter | `outcome`: each kernel counter (`seen`, `captured`, `limited_port`…) |
//! | `udp_agent_port_packets_total` | counter | `port`, `outcome` (`captured`, `limited`); the 100 busiest ports with non-zero counts |
//! | `udp_agent_pipeline_<counter>_total` | counter | `decoded`, `decode_errors`, `queue_drops`, `oversize`, `batched`, `emitted`, `sink_failed`; `fragments`, `reassembled`, `fragment_timeout`, `fragment_overlap`, `fragment_evicted`, `fragment_duplicate`, `fragment_invalid`, `fragment_discarded` |
//! | `udp_agent_reassembly_held_bytes` | gauge | |
//! | `udp_agent_eventbridge_<counter>_total` | counter | `received`, `requests`, `delivered`, `unconfirmed`, `retried`, `throttled`, `dead_lettered`, `dead_letter_errors`, `cost_guard_skipped`, `undelivered`, `left_spooled` |
//! | `udp_agent_eventbridge_failed_total` | counter | `code` |
//! | `udp_agent_eventbridge_in_flight_requests` | gauge | |
//! | `udp_agent_eventbridge_cost_guard_used_events`, `…_limit_events` | gauge | |
//! | `udp_agent_eventbridge_request_rate_limit` | gauge | |
//! | `udp_agent_stdout_written_total`, `…_undelivered_total` | counter | |
//! | `udp_agent_spool_<gauge>` | gauge | `bytes`, `segments`, `batches`, `entries`, `backlog_bytes`, `oldest_age_seconds`, `full`, `write_failing` |
//! | `udp_agent_spool_<counter>_total` | counter | `written_batches`, `written_entries`, `read_batches`, `acked_batches`, `torn_records`, `write_errors`, `syncs` |
//! | `udp_agent_spool_dropped_entries_total` | counter | `reason` |
//! | `udp_agent_delivery_latency_seconds` | histogram | |
//! | `udp_agent_xdp_attached` | gauge | `iface`, `mode` |
//! | `udp_agent_xdp_reattached_total` | counter | `iface` |
//! | `udp_agent_build_info` | info | `version`, `revision` (git) |

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::{JoinHandle, JoinSet},
};
use tracing::{info, warn};

use crate::{
    control::{Control, ControlError, PortStats},
    health::{self, Health},
    hotplug::InterfaceStatus,
    sink::SinkStats,
    spool::SpoolStats,
    stats::{Kind, PipelineStats, Sample, count_drop},
};

/// Most `udp_agent_port_packets_total` ports per scrape (the busiest): a
/// bound on the series a port scan can create.
pub const PORT_SERIES_LIMIT: usize = 100;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------

/// Where kernel counters come from: the running agent's maps (or a fake in
/// tests).
pub trait KernelSource: fmt::Debug + Send + Sync + 'static {
    /// Kernel counters summed over CPUs, by name.
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError>;
    /// Ports with non-zero counts, busiest first, at most `n`.
    fn busiest_ports(&self, n: usize) -> Result<Vec<PortStats>, ControlError>;
}

/// The agent's own maps, shared with the rest of `run`.
pub struct SharedControl(pub Arc<Mutex<Control>>);

impl fmt::Debug for SharedControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedControl")
    }
}

impl KernelSource for SharedControl {
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError> {
        self.0.lock().expect("control lock").counters()
    }

    fn busiest_ports(&self, n: usize) -> Result<Vec<PortStats>, ControlError> {
        self.0.lock().expect("control lock").busiest_ports(n)
    }
}

/// Reads every value at scrape time.
#[derive(Debug)]
pub struct AgentCollector {
    pub kernel: Arc<dyn KernelSource>,
    pub pipeline: Arc<PipelineStats>,
    pub sink: Option<Arc<dyn SinkStats>>,
    /// Present when the spool runs.
    pub spool: Option<Arc<SpoolStats>>,
    pub interfaces: Arc<InterfaceStatus>,
}

/// Failed kernel reads during scrapes (warned about at a doubling interval).
static SCRAPE_ERRORS: AtomicU64 = AtomicU64::new(0);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(value);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// Help text of the pipeline counters (names as in `PipelineStats`).
fn pipeline_help(name: &str) -> &'static str {
    match name {
        "decoded" => "Datagrams decoded from the ring (whole, or reassembled from fragments)",
        "decode_errors" => "Ring records that did not decode (never expected)",
        "queue_drops" => {
            "Packets dropped because the sink's queue was full (raise --queue-capacity or sink throughput)"
        }
        "oversize" => "Entries larger than a PutEvents request, dropped",
        "packed" => "Packets that went into packed entries (ports with --pack)",
        "packs" => "Packed entries made (entries = decoded - packed + packs)",
        "batched" => "Entries handed to the sink",
        "emitted" => "Entries the sink wrote (stdout) or EventBridge accepted",
        "sink_failed" => "Entries the sink could not deliver",
        "fragments" => "IP fragment records taken in for reassembly",
        "reassembled" => "Datagrams reassembled from IP fragments",
        "fragment_timeout" => {
            "Datagrams dropped incomplete at --reassembly-timeout (or at shutdown)"
        }
        "fragment_overlap" => "Datagrams dropped for overlapping IP fragments (RFC 5722)",
        "fragment_evicted" => "Incomplete datagrams dropped to stay within --reassembly-max-bytes",
        "fragment_duplicate" => "IP fragments dropped as duplicates of data already held",
        "fragment_invalid" => "Datagrams dropped for fragments or a UDP length that do not add up",
        "fragment_discarded" => {
            "Datagrams the XDP program rejected after some of their fragments had come"
        }
        _ => "Pipeline counter",
    }
}

impl AgentCollector {
    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let read = self.kernel.counters().and_then(|c| {
            let ports = self.kernel.busiest_ports(PORT_SERIES_LIMIT)?;
            Ok((c, ports))
        });
        let (counters, ports) = match read {
            Ok(v) => v,
            Err(e) => {
                count_drop(
                    &SCRAPE_ERRORS,
                    &format!("metrics: could not read the kernel counters: {e}"),
                );
                return Ok(());
            }
        };
        let mut family = enc.encode_descriptor(
            "udp_agent_kernel_packets",
            "Packets seen by the XDP program, by outcome (kernel counters summed over CPUs, as `udp-agent stats` shows them)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in counters {
            let labels = [("outcome", outcome)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let mut family = enc.encode_descriptor(
            "udp_agent_port_packets",
            "Packets of enabled ports captured or over the port's rate limit, by destination port (the busiest ports with non-zero counts)",
            None,
            MetricType::Counter,
        )?;
        for p in ports {
            let port = p.port.to_string();
            for (outcome, value) in [("captured", p.captured), ("limited", p.limited)] {
                let labels = [("port", port.as_str()), ("outcome", outcome)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_pipeline(&self, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, value) in self.pipeline.snapshot() {
            counter(
                enc,
                &format!("udp_agent_pipeline_{name}"),
                pipeline_help(name),
                value,
            )?;
        }
        Self::encode_samples(
            &[Sample::gauge(
                "reassembly_held_bytes",
                "Bytes the IP fragments of incomplete datagrams hold now (at most --reassembly-max-bytes)",
                self.pipeline.reassembly.held_bytes.load(Relaxed),
            )],
            enc,
        )?;
        let (sum, count, buckets) = self.pipeline.latency.snapshot();
        let mut m = enc.encode_descriptor(
            "udp_agent_delivery_latency",
            "Seconds from capture in the kernel (the event's Time; without a limit, at most one kernel tick late) to the sink's acknowledgement (EventBridge accepted the entry; stdout: written)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    /// Samples kept by a sink or the spool, each name one family.
    fn encode_samples(samples: &[Sample], enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut i = 0;
        while i < samples.len() {
            let first = &samples[i];
            let n = samples[i..]
                .iter()
                .take_while(|s| s.name == first.name)
                .count();
            let name = format!("udp_agent_{}", first.name);
            let kind = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = enc.encode_descriptor(&name, first.help, None, kind)?;
            if first.label.is_none() {
                // One series without labels.
                match first.kind {
                    Kind::Counter => ConstCounter::new(first.value).encode(family)?,
                    Kind::Gauge => ConstGauge::new(first.value as i64).encode(family)?,
                }
                i += 1;
                continue;
            }
            for s in &samples[i..i + n] {
                let (k, v) = s.label.as_ref().expect("a family with labels");
                let labels = [(*k, v.as_str())];
                match s.kind {
                    Kind::Counter => {
                        ConstCounter::new(s.value).encode(family.encode_family(&labels)?)?
                    }
                    Kind::Gauge => {
                        ConstGauge::new(s.value as i64).encode(family.encode_family(&labels)?)?
                    }
                }
            }
            i += n;
        }
        Ok(())
    }

    fn encode_interfaces(&self, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let ifaces = self.interfaces.snapshot();
        let mut family = enc.encode_descriptor(
            "udp_agent_xdp_attached",
            "1 if the XDP program is attached to the interface in this mode, 0 while the interface is gone (mode: the last one, or none)",
            None,
            MetricType::Gauge,
        )?;
        for i in &ifaces {
            let mode = i
                .mode
                .or(i.last_mode)
                .map_or_else(|| "none".to_owned(), |m| m.to_string());
            let labels = [("iface", i.name.as_str()), ("mode", mode.as_str())];
            ConstGauge::new(i64::from(i.mode.is_some())).encode(family.encode_family(&labels)?)?;
        }
        let mut family = enc.encode_descriptor(
            "udp_agent_xdp_reattached",
            "Times the XDP program was attached again to an interface that had gone away",
            None,
            MetricType::Counter,
        )?;
        for i in &ifaces {
            let labels = [("iface", i.name.as_str())];
            ConstCounter::new(i.reattached).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = enc.encode_descriptor(
            "udp_agent_build",
            "The running udp-agent",
            None,
            MetricType::Info,
        );
        m?.encode_info(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("BUILD_GIT_REV")),
        ])?;
        self.encode_kernel(&mut enc)?;
        self.encode_pipeline(&mut enc)?;
        if let Some(sink) = &self.sink {
            Self::encode_samples(&sink.samples(), &mut enc)?;
        }
        if let Some(spool) = &self.spool {
            Self::encode_samples(&spool.samples(), &mut enc)?;
        }
        self.encode_interfaces(&mut enc)
    }
}

/// A registry holding the collector.
pub fn registry(collector: AgentCollector) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(collector));
    r
}

/// The exposition: OpenMetrics text, or the classic Prometheus text
/// format.
pub fn render(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let result = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
    };
    // Writing into a String cannot fail; an encoder error is a bug (e.g. a
    // duplicate label), so show it rather than half a page.
    if let Err(e) = result {
        return format!("# udp-agent: encoding metrics failed: {e}\n");
    }
    out
}

// ---------------------------------------------------------------------------
// The HTTP server
// ---------------------------------------------------------------------------

/// What one listener answers. `--metrics-addr` serves `/metrics` and
/// `/healthz`; `--health-addr` only `/healthz`, so that it can be opened to
/// a load balancer's health checks while the metrics stay private. Every
/// other path is 404.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// `/metrics`, or `None` for a health-only listener.
    pub metrics: Option<Arc<Registry>>,
    pub health: Arc<Health>,
}

/// Binds the address given to `flag`, if any (before anything is attached,
/// so that a taken port stops the start).
pub async fn bind(addr: Option<SocketAddr>, flag: &str) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {flag} {addr}"))?;
    Ok(Some(listener))
}

/// Whether `addr` can only be reached from this host.
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Serves the metrics listener and the health listener, whichever exist,
/// and samples the sink for `/healthz` meanwhile, until `stop` turns true.
/// The tasks to wait for at shutdown.
pub fn start(
    metrics: Option<(TcpListener, Registry)>,
    health_listener: Option<TcpListener>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some((listener, registry)) = metrics {
        let endpoints = Endpoints {
            metrics: Some(Arc::new(registry)),
            health: health.clone(),
        };
        tasks.push(tokio::spawn(serve(listener, endpoints, stop.clone())));
    }
    if let Some(listener) = health_listener {
        let endpoints = Endpoints {
            metrics: None,
            health: health.clone(),
        };
        tasks.push(tokio::spawn(serve(listener, endpoints, stop.clone())));
    }
    if !tasks.is_empty() {
        tasks.push(tokio::spawn(health::watch(health, stop)));
    }
    tasks
}

/// Serves `endpoints` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        if endpoints.metrics.is_none() {
            info!("health: serving http://{addr}/healthz");
        } else {
            info!("metrics: serving http://{addr}/metrics and /healthz");
            if !is_loopback(&addr) {
                warn!(
                    %addr,
                    "metrics: --metrics-addr is not a loopback address, and /metrics has no authentication: anyone who can reach {addr} reads the agent's counters, ports and interfaces. Keep it on 127.0.0.1, or allow only your scraper in the firewall or security group; for a load balancer's health check use --health-addr, which serves /healthz alone"
                );
            }
        }
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stop.changed() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let endpoints = endpoints.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| handle(req, endpoints.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away mid-request is not the agent's problem.
            let _ = conn.await;
        });
    }
    connections.abort_all();
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

/// Whether the client asked for OpenMetrics (Prometheus does).
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut r = response(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        "only GET and HEAD\n".into(),
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn handle(
    req: Request<Incoming>,
    endpoints: Endpoints,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match (req.uri().path(), &endpoints.metrics) {
        ("/healthz", _) if get => {
            // In memory only (see crate::health): answered on this task.
            let verdict = endpoints.health.check(tokio::time::Instant::now());
            let status = if verdict.healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut r = response(status, "application/json", verdict.to_json());
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        ("/metrics", Some(registry)) if get => {
            let openmetrics = wants_openmetrics(&req);
            let registry = registry.clone();
            // Reading the maps is a few thousand syscalls: off the runtime's
            // worker threads.
            match tokio::task::spawn_blocking(move || render(&registry, openmetrics)).await {
                Ok(body) => response(
                    StatusCode::OK,
                    if openmetrics {
                        OPENMETRICS
                    } else {
                        PROMETHEUS_TEXT
                    },
                    body,
                ),
                Err(e) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("collecting metrics failed: {e}\n"),
                ),
            }
        }
        ("/healthz", _) | ("/metrics", Some(_)) => method_not_allowed(),
        (_, Some(_)) => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: this endpoint serves /metrics and /healthz\n".into(),
        ),
        (_, None) => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: this endpoint serves /healthz\n".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hotplug::IfaceState,
        loader::Attached,
        sink::eventbridge::{EventBridgeStats, cost_guard::SharedCostGuard, stats::Observer},
    };

    #[derive(Debug)]
    struct FakeKernel;

    impl KernelSource for FakeKernel {
        fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError> {
            Ok(vec![("seen", 7), ("captured", 5)])
        }

        fn busiest_ports(&self, _n: usize) -> Result<Vec<PortStats>, ControlError> {
            Ok(vec![PortStats {
                port: 514,
                settings: None,
                captured: 5,
                limited: 2,
            }])
        }
    }

    fn collector(eventbridge: bool) -> AgentCollector {
        let pipeline = Arc::new(PipelineStats::default());
        pipeline.decoded.store(5, Relaxed);
        pipeline.latency.observe(1_000_000_000, 1_003_000_000); // 3 ms
        pipeline.latency.observe(1_000_000_000, 1_200_000_000); // 200 ms
        let interfaces = Arc::new(InterfaceStatus::default());
        interfaces.set(vec![
            IfaceState::attached("eth0", 2, Attached::Skb),
            IfaceState {
                mode: None,
                ..IfaceState::attached("eth1", 3, Attached::Driver)
            },
        ]);
        let sink = eventbridge.then(|| {
            let s = Arc::new(EventBridgeStats::default());
            s.count_failed("AccessDeniedException", 3);
            s.requests.store(4, Relaxed);
            Arc::new(Observer {
                counters: s,
                cost_guard: Arc::new(SharedCostGuard::new(0)),
                limiter: None,
            }) as Arc<dyn SinkStats>
        });
        let spool = eventbridge.then(|| {
            let s = SpoolStats::default();
            s.bytes.store(4096, Relaxed);
            s.count_dropped(crate::spool::DropReason::Full, 2, 20);
            Arc::new(s)
        });
        AgentCollector {
            kernel: Arc::new(FakeKernel),
            pipeline,
            sink,
            spool,
            interfaces,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn the_exposition_has_every_series() {
        let text = render(&registry(collector(true)), false);
        let samples = lines(&text);
        for want in [
            r#"udp_agent_kernel_packets_total{outcome="seen"} 7"#,
            r#"udp_agent_kernel_packets_total{outcome="captured"} 5"#,
            r#"udp_agent_port_packets_total{port="514",outcome="captured"} 5"#,
            r#"udp_agent_port_packets_total{port="514",outcome="limited"} 2"#,
            "udp_agent_pipeline_decoded_total 5",
            "udp_agent_pipeline_queue_drops_total 0",
            "udp_agent_eventbridge_requests_total 4",
            r#"udp_agent_eventbridge_failed_total{code="AccessDeniedException"} 3"#,
            "udp_agent_eventbridge_in_flight_requests 0",
            "udp_agent_eventbridge_cost_guard_limit_events 0",
            "udp_agent_spool_bytes 4096",
            r#"udp_agent_spool_dropped_entries_total{reason="full"} 20"#,
            r#"udp_agent_spool_dropped_entries_total{reason="oldest"} 0"#,
            r#"udp_agent_delivery_latency_seconds_bucket{le="0.001"} 0"#,
            r#"udp_agent_delivery_latency_seconds_bucket{le="0.005"} 1"#,
            r#"udp_agent_delivery_latency_seconds_bucket{le="0.25"} 2"#,
            r#"udp_agent_delivery_latency_seconds_bucket{le="+Inf"} 2"#,
            "udp_agent_delivery_latency_seconds_count 2",
            r#"udp_agent_xdp_attached{iface="eth0",mode="skb"} 1"#,
            r#"udp_agent_xdp_attached{iface="eth1",mode="driver"} 0"#,
            r#"udp_agent_xdp_reattached_total{iface="eth0"} 0"#,
        ] {
            assert!(samples.contains(&want), "no `{want}` in:\n{text}");
        }
        assert!(
            samples
                .iter()
                .any(|l| l.starts_with("udp_agent_delivery_latency_seconds_sum 0.203")),
            "{text}"
        );
        assert!(text.contains("# TYPE udp_agent_kernel_packets_total counter"));
        assert!(text.contains("# TYPE udp_agent_delivery_latency_seconds histogram"));
    }

    #[test]
    fn openmetrics_ends_with_eof_and_sink_series_need_the_sink() {
        let text = render(&registry(collector(false)), true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("udp_agent_build_info{version="), "{text}");
        assert!(!text.contains("udp_agent_eventbridge_"), "{text}");
        assert!(!text.contains("udp_agent_spool_"), "{text}");
        assert!(text.contains(r#"udp_agent_kernel_packets_total{outcome="captured"} 5"#));
    }
}
