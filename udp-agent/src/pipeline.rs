//! `udp-agent run`: load, pin, attach, and run capture ▸ encode/batch ▸
//! spool ▸ sink until SIGINT/SIGTERM, then shut down without losing what
//! was captured. Meanwhile the main task keeps the program attached to
//! interfaces that come and go ([`crate::hotplug`]), and with
//! --metrics-addr or --health-addr server tasks answer Prometheus
//! ([`crate::metrics`]) and load balancers ([`crate::health`]).
//!
//! The sink is known here only through [`Sink`]: its limits cut the
//! batches, its `durable` asks for the spool ([`crate::spool`]) in front of
//! it, and its stats go to the metrics, the health check and the exit
//! report.
//!
//! Accounting: every captured packet ends in one counter. Packets:
//! `decoded = queue_drops + oversize + batched` (with packing, packed
//! packets are counted once more as `packed`, their entries as `packs`:
//! `decoded - packed + packs = queue_drops + oversize + batched`, once the
//! packs waiting at shutdown are sent). Entries `batched` go to the spool,
//! which writes them (`spool_written_entries`) or drops and counts them
//! (`spool_dropped_entries`); without a spool they go to the sink. Entries
//! the sink takes in end as `emitted` or `sink_failed`, or, with the
//! EventBridge sink, as its `cost_guard_skipped` or `left_spooled` (see
//! [`crate::sink::eventbridge::stats`]).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::Map;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    time::{Instant, sleep_until},
};
use tracing::{info, warn};
use udp_ebpf_common::{CONFIG_AFXDP, Config};

use crate::{
    afxdp::{self, CapturePath},
    capture,
    clock::WallClock,
    config::{self, RunArgs},
    control::{self, Control},
    encode::{Encoder, Entry},
    handoff::{self, Handoff},
    health::Health,
    hotplug::{self, InterfaceStatus, Watcher},
    loader,
    metrics::{self, AgentCollector, SharedControl},
    privileges,
    reassembly::{self, Reassembler},
    record::Packet,
    sink::{
        self, Delivery, Limits, Selected, Sink, SinkStats, eventbridge::EventBridgeSink,
        stdout::StdoutSink,
    },
    spool::{Spool, SpoolStats},
    stats::PipelineStats,
};

/// Most packets [`encode_and_batch`] takes from its queue at once.
const RECV_MANY: usize = 256;
/// Batches waiting between the spool (or the handoff) and the sink: enough
/// to keep a sink's request slots busy; the backlog waits in the spool.
pub const DELIVERY_QUEUE: usize = 64;

/// How long the spool (or pass-through) may take to close once the sink
/// has stopped.
const FEED_GRACE: Duration = Duration::from_secs(1);

/// Removes the pins when `run` returns, however it returns.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = control::remove_pins(&self.0) {
            warn!(error = %e, "could not remove pins");
        }
    }
}

/// Runs the agent until a signal asks it to stop.
pub async fn run(args: RunArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    privileges::check_run().map_err(|e| anyhow!(e))?;
    // Before anything is pinned or attached: a SIGTERM during start-up is
    // then held for the loop below, which cleans up, instead of killing
    // the process with its pins and lock left behind.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    // Resolve every interface before touching the kernel (with
    // --wait-for-iface, missing ones are waited for once attached).
    if !args.wait_for_iface {
        for iface in &args.ifaces {
            loader::ifindex(iface)?;
        }
    }
    let firewall = config::startup(
        &args.ports,
        &args.port_limit,
        &args.port_encoding,
        &args.firewall,
    )?;
    control::check_pin_dir(&args.pin.pin_dir)?;
    if args.ports.is_empty() {
        warn!("no --port given: nothing is captured until `udp-agent ports add` enables one");
    }
    let selected = sink::select(args.sink, args.event_bus.as_deref());
    let event_bus = sink::event_bus_name(args.event_bus.as_deref());
    let stats = Arc::new(PipelineStats::default());
    // The sink (Region, credentials, dead-letter file) and the spool (its
    // directory, its lock, what earlier runs left) are checked before the
    // kernel is touched: a configuration error must not cost a packet.
    let sink = build_sink(selected, &args, stats.clone()).await?;
    let limits = sink.limits();
    let sink_stats = sink.stats();
    let spool = match args.spool.settings() {
        Some(settings) if sink.durable() => Some(Spool::open(&settings).with_context(|| {
            format!(
                "opening the spool (--spool-dir {}; `none` turns it off)",
                settings.dir.display()
            )
        })?),
        _ => None,
    };
    let spool_stats = spool.as_ref().map(Spool::stats);
    // Bound before the kernel is touched, too: a taken port stops the start.
    let metrics_listener = metrics::bind(args.metrics_addr, "--metrics-addr").await?;
    let health_listener = metrics::bind(args.health_addr, "--health-addr").await?;

    let pin_dir = control::resolve_pin_dir(&args.pin.pin_dir)
        .with_context(|| format!("preparing pin directory {}", args.pin.pin_dir.display()))?;
    let _lock = control::claim(&pin_dir)
        .with_context(|| format!("preparing pin directory {}", args.pin.pin_dir.display()))?;
    let _pins = PinGuard(pin_dir.clone());

    let mut ebpf = loader::load(args.ring_bytes)?;
    let mut control = Control::take_and_pin(&mut ebpf, &pin_dir)?;
    control.set_config(Config {
        snaplen: args.snaplen,
        flags: if args.capture_path == CapturePath::Ringbuf {
            0
        } else {
            CONFIG_AFXDP
        },
        ..Config::default()
    })?;
    firewall.apply(&mut control)?;
    let ring = match ebpf.take_map("EVENTS") {
        Some(map @ Map::RingBuf(_)) => {
            capture::Ring::try_from(map).context("mapping the EVENTS ring buffer")?
        }
        _ => bail!("the eBPF object has no EVENTS ring buffer"),
    };

    // The AF_XDP sockets' own capture loop, fed the sockets of each
    // interface as the watcher attaches to it.
    let (xsk_tx, xsk_rx) = mpsc::unbounded_channel();
    let mut sockets = match args.capture_path {
        CapturePath::Ringbuf => None,
        path => Some(afxdp::Sockets::new(
            &mut ebpf,
            path,
            args.xsk_frames,
            xsk_tx,
        )?),
    };
    let new_encoder = || {
        let mut e = Encoder::new(&args.source, &args.detail_type, event_bus, WallClock::now());
        e.set_packing(args.pack_settings());
        e
    };
    let mut encoder = new_encoder();
    let mut xsk_encoder = new_encoder();
    let (batch_tx, batch_rx) =
        mpsc::channel::<Vec<Entry>>(handoff::queue_batches(args.queue_capacity, limits));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Attach last: from here on, packets flow.
    let interfaces = Arc::new(InterfaceStatus::default());
    let mut watcher = Watcher::new(&args.ifaces, args.xdp_mode, interfaces.clone());
    for (ifindex, name) in watcher.start(&mut ebpf, args.wait_for_iface)? {
        encoder.name_interface(ifindex, &name);
        xsk_encoder.name_interface(ifindex, &name);
    }
    if let Some(s) = &mut sockets
        && let Err(e) = s.sync(&interfaces.snapshot())
    {
        watcher.detach_all(&mut ebpf);
        return Err(e.context(
            "--capture-path afxdp: AF_XDP sockets could not be opened (use --capture-path auto or ringbuf to run without them)",
        ));
    }
    let control = Arc::new(Mutex::new(control));
    let health = Arc::new(Health::new(
        interfaces.clone(),
        sink_stats.clone(),
        spool_stats.clone(),
        args.health_sink_grace,
    ));
    let servers = metrics::start(
        metrics_listener.map(|listener| {
            let registry = metrics::registry(AgentCollector {
                kernel: Arc::new(SharedControl(control.clone())),
                pipeline: stats.clone(),
                sink: Some(sink_stats.clone()),
                spool: spool_stats.clone(),
                interfaces: interfaces.clone(),
            });
            (listener, registry)
        }),
        health_listener,
        health,
        stop_rx.clone(),
    );
    info!(
        ports = firewall.ports_summary(),
        ifaces = watcher.attached().join(","),
        pin_dir = %pin_dir.display(),
        sink = ?selected,
        spool = spool.as_ref().map_or_else(|| "off".to_owned(), |_| args.spool.spool_dir.display().to_string()),
        event_bus,
        "capturing"
    );

    let handoff = Handoff::new(
        encoder,
        batch_tx.clone(),
        limits,
        Duration::from_millis(args.batch_linger_ms),
        stats.clone(),
    );
    let reassembler = Reassembler::new(
        reassembly::Settings {
            timeout: args.reassembly_timeout,
            max_bytes: args.reassembly_max_bytes,
            snaplen: args.snaplen,
        },
        stats.clone(),
    );
    let mut capture = tokio::spawn(capture::run(
        ring,
        handoff,
        reassembler,
        stats.clone(),
        stop_rx.clone(),
    ));
    let mut xsk_capture = sockets.is_some().then(|| {
        let handoff = Handoff::new(
            xsk_encoder,
            batch_tx,
            limits,
            Duration::from_millis(args.batch_linger_ms),
            stats.clone(),
        );
        tokio::spawn(afxdp::run(xsk_rx, handoff, stats.clone(), stop_rx.clone()))
    });
    let mut delivery = deliver(spool, sink, batch_rx, stop_rx.clone())?;

    let mut sink_result = None;
    let mut interface_poll = tokio::time::interval(hotplug::POLL_INTERVAL);
    interface_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigint.recv() => {
                info!("SIGINT: shutting down");
                break;
            }
            _ = sigterm.recv() => {
                info!("SIGTERM: shutting down");
                break;
            }
            r = &mut delivery => {
                warn!("sink stopped early; shutting down");
                sink_result = Some(r);
                break;
            }
            _ = interface_poll.tick() => {
                watcher.poll(&mut ebpf);
                if let Some(s) = &mut sockets {
                    // Failures are logged; the interface keeps the ring.
                    let _ = s.sync(&interfaces.snapshot());
                }
            }
        }
    }

    // Detach first so the final ring drain sees everything the kernel wrote.
    watcher.detach_all(&mut ebpf);
    let _ = stop_tx.send(true);
    // The final drain hands everything to the spool (which always takes
    // it) or the sink; a sink that takes nothing (a stdout nobody reads)
    // must not hold the exit up past the drain timeout.
    let drain_timeout = args.eventbridge.drain_timeout;
    match tokio::time::timeout(drain_timeout, &mut capture).await {
        Ok(joined) => joined
            .context("capture task")?
            .context("draining the ring buffer")?,
        Err(_) => {
            warn!(
                "the sink took nothing for the whole drain timeout; what capture still held is dropped"
            );
            capture.abort();
        }
    }
    let mut xsk_totals = None;
    if let Some(task) = &mut xsk_capture {
        match tokio::time::timeout(drain_timeout, &mut *task).await {
            Ok(joined) => {
                xsk_totals = Some(
                    joined
                        .context("AF_XDP capture task")?
                        .context("reading the AF_XDP sockets")?,
                )
            }
            Err(_) => task.abort(),
        }
    }
    let sink_result = match sink_result {
        Some(r) => r,
        None => delivery.await,
    };

    for server in servers {
        let _ = server.await;
    }
    report(
        &control.lock().expect("control lock"),
        &stats,
        &*sink_stats,
        spool_stats.as_deref(),
    );
    if let Some(t) = xsk_totals {
        info!("af_xdp counters: {}", t.line());
        for socket in &t.sockets {
            info!("af_xdp socket: {socket}");
        }
    }
    sink_result.context("the delivery thread ended without a result")??;
    Ok(())
}

/// Starts the delivery thread: the spool (or, without one, a pass-through)
/// and the sink, on one single-threaded runtime. The spool's hand-offs to
/// the sink and the sink's acknowledgements then never wake another thread
/// (on two CPUs, those wake-ups cost more than the spool's own work). The
/// receiver gives the sink's result once both are done.
fn deliver(
    spool: Option<Spool>,
    sink: Box<dyn sink::Sink>,
    batches: mpsc::Receiver<Vec<Entry>>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the delivery runtime")?;
    std::thread::Builder::new()
        .name("delivery".into())
        .spawn(move || {
            let result = rt.block_on(async move {
                let (tx, rx) = mpsc::channel::<Delivery>(DELIVERY_QUEUE);
                let feed = match spool {
                    Some(spool) => tokio::spawn(spool.serve(batches, tx)),
                    None => tokio::spawn(pass_through(batches, tx)),
                };
                let result = sink.run(rx, stop).await;
                // Once the sink is done, the spool only collects its last
                // acknowledgements and closes. A sink that gave up on a
                // blocked output (a stdout nobody reads) still holds the
                // queue, so the feed gets a moment, not forever.
                let abort = feed.abort_handle();
                if tokio::time::timeout(FEED_GRACE, feed).await.is_err() {
                    warn!("the spool did not close within a second of the sink stopping");
                    abort.abort();
                }
                result
            });
            let _ = done_tx.send(result);
        })
        .context("starting the delivery thread")?;
    Ok(done_rx)
}

/// Batches from `rx` as deliveries held only in memory (no spool), for
/// tests and benchmarks that drive a sink directly.
pub fn in_memory(rx: mpsc::Receiver<Vec<Entry>>) -> mpsc::Receiver<Delivery> {
    let (tx, deliveries) = mpsc::channel(DELIVERY_QUEUE);
    tokio::spawn(pass_through(rx, tx));
    deliveries
}

/// Builds the selected sink from `run`'s settings: the one place that
/// names every sink.
async fn build_sink(
    selected: Selected,
    args: &RunArgs,
    pipeline: Arc<PipelineStats>,
) -> Result<Box<dyn Sink>> {
    Ok(match selected {
        Selected::Stdout => Box::new(StdoutSink::new(
            pipeline,
            args.eventbridge.drain_timeout,
            args.max_entry_bytes as usize,
        )),
        Selected::EventBridge => {
            let settings = args.eventbridge_settings();
            let client = settings
                .connect()
                .await
                .context("configuring the EventBridge sink")?;
            Box::new(
                EventBridgeSink::new(settings, client, pipeline)
                    .context("configuring the EventBridge sink")?,
            )
        }
    })
}

/// Without a spool: batches go to the sink as they are, acknowledged to
/// nobody.
async fn pass_through(mut rx: mpsc::Receiver<Vec<Entry>>, tx: mpsc::Sender<Delivery>) {
    while let Some(batch) = rx.recv().await {
        if tx.send(Delivery::in_memory(batch)).await.is_err() {
            break;
        }
    }
}

/// Encodes packets from a channel and groups them into batches for the
/// sink, as the capture loop does with ring records ([`Handoff`]: batches
/// within `limits`, or whatever waited `linger`), until `rx` closes; then
/// sends what waits. For tests and benchmarks that feed packets without a
/// kernel.
pub async fn encode_and_batch(
    mut rx: mpsc::Receiver<Packet>,
    tx: mpsc::Sender<Vec<Entry>>,
    encoder: Encoder,
    limits: Limits,
    linger: Duration,
    stats: Arc<PipelineStats>,
) {
    let mut out = Handoff::new(encoder, tx, limits, linger, stats.clone());
    let mut packets = Vec::with_capacity(RECV_MANY);
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        let deadline = out.deadline();
        tokio::select! {
            biased;
            n = rx.recv_many(&mut packets, RECV_MANY) => {
                if n == 0 {
                    break;
                }
                for packet in packets.drain(..) {
                    // Waits for room: a test's channel is its own bound.
                    out.push_waiting(&packet.view()).await;
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                out.flush();
            }
            _ = clock.tick() => out.set_clock(WallClock::now()),
        }
    }
    out.finish().await;
}

/// Final counters on stderr, so an operator sees what the run did.
fn report(
    control: &Control,
    stats: &PipelineStats,
    sink: &dyn SinkStats,
    spool: Option<&SpoolStats>,
) {
    match control.counters() {
        Ok(kernel) => {
            let line: Vec<String> = kernel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            info!("kernel counters: {}", line.join(" "));
        }
        Err(e) => warn!(error = %e, "could not read kernel counters"),
    }
    let line: Vec<String> = stats
        .snapshot()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    info!("pipeline counters: {}", line.join(" "));
    info!(
        "reassembly: held at most {} bytes",
        stats
            .reassembly
            .peak_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    info!("sink counters: {}", sink.summary());
    if let Some(spool) = spool {
        let line: Vec<String> = spool
            .samples()
            .iter()
            .map(|s| match &s.label {
                Some((_, v)) => format!("{}[{v}]={}", s.name, s.value),
                None => format!("{}={}", s.name, s.value),
            })
            .collect();
        info!("spool counters: {}", line.join(" "));
    }
}
