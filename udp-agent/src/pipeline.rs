//! `udp-agent run`: load, pin, attach, and run capture ▸ encode/batch ▸ sink
//! until SIGINT/SIGTERM, then shut down without losing what was captured.
//! Meanwhile the main task keeps the program attached to interfaces that
//! come and go ([`crate::hotplug`]), and with --metrics-addr a server task
//! answers Prometheus ([`crate::metrics`]).
//!
//! Accounting: every captured packet ends in one counter. Packets:
//! `decoded = queue_drops + oversize + batched`; entries `batched` end as
//! `emitted` or `sink_failed`, or, with the EventBridge sink, as its
//! `cost_guard_skipped` (see [`crate::sink::eventbridge::stats`]).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::RingBuf;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};
use udp_ebpf_common::Config;

use crate::{
    batch::Batcher,
    capture,
    cli::RunArgs,
    clock::WallClock,
    commands,
    control::{self, Control},
    encode::{Encoder, Entry},
    hotplug::{self, InterfaceStatus, Watcher},
    loader,
    metrics::{self, AgentCollector, SharedControl},
    privileges,
    record::Packet,
    sink::{
        self, Selected,
        eventbridge::{self, EventBridgeSink, EventBridgeStats, Settings},
    },
    stats::{PipelineStats, count_drop},
};

/// Batches that may wait for the sink. Small: batches are already up to 10
/// entries each, and a slow sink must push back into the (counted) packet
/// queue rather than grow memory here.
const BATCH_QUEUE: usize = 64;

/// Most packets the encoder takes from its queue at once.
const RECV_MANY: usize = 256;

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
    // Resolve every interface before touching the kernel (with
    // --wait-for-iface, missing ones are waited for once attached).
    if !args.wait_for_iface {
        for iface in &args.ifaces {
            loader::ifindex(iface)?;
        }
    }
    let firewall = commands::startup(&args.ports, &args.port_limit, &args.firewall)?;
    commands::check_pin_dir(&args.pin.pin_dir)?;
    if args.ports.is_empty() {
        warn!("no --port given: nothing is captured until `udp-agent ports add` enables one");
    }
    let selected = sink::select(args.sink, args.event_bus.as_deref());
    let event_bus = sink::event_bus_name(args.event_bus.as_deref());
    let stats = Arc::new(PipelineStats::default());
    // Region, credentials and the dead-letter file are checked before the
    // kernel is touched: a configuration error must not cost a packet.
    let eventbridge = match selected {
        Selected::Stdout => None,
        Selected::EventBridge => {
            let settings = Settings::from_args(&args.eventbridge);
            let client = settings
                .connect()
                .await
                .context("configuring the EventBridge sink")?;
            Some(
                EventBridgeSink::new(settings, client, stats.clone())
                    .context("configuring the EventBridge sink")?,
            )
        }
    };
    let eventbridge_stats = eventbridge.as_ref().map(EventBridgeSink::stats);
    // Bound before the kernel is touched, too: a taken port stops the start.
    let metrics_listener = match args.metrics_addr {
        None => None,
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("listening on --metrics-addr {addr}"))?,
        ),
    };

    let pin_dir = args.pin.pin_dir.clone();
    let _lock = control::claim(&pin_dir)
        .with_context(|| format!("preparing pin directory {}", pin_dir.display()))?;
    let _pins = PinGuard(pin_dir.clone());

    let mut ebpf = loader::load(args.ring_bytes)?;
    let mut control = Control::take_and_pin(&mut ebpf, &pin_dir)?;
    control.set_config(Config {
        snaplen: args.snaplen,
        ..Config::default()
    })?;
    firewall.apply(&mut control)?;
    let ring = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .context("the eBPF object has no EVENTS ring buffer")?,
    )
    .context("opening the EVENTS ring buffer")?;

    let mut encoder = Encoder::new(&args.source, &args.detail_type, event_bus, WallClock::now());
    let (packet_tx, packet_rx) = mpsc::channel::<Packet>(args.queue_capacity as usize);
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Entry>>(BATCH_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Attach last: from here on, packets flow.
    let interfaces = Arc::new(InterfaceStatus::default());
    let mut watcher = Watcher::new(&args.ifaces, args.xdp_mode, interfaces.clone());
    for (ifindex, name) in watcher.start(&mut ebpf, args.wait_for_iface)? {
        encoder.name_interface(ifindex, &name);
    }
    let control = Arc::new(Mutex::new(control));
    let metrics_server = metrics_listener.map(|listener| {
        let registry = metrics::registry(AgentCollector {
            kernel: Arc::new(SharedControl(control.clone())),
            pipeline: stats.clone(),
            eventbridge: eventbridge_stats.clone(),
            interfaces: interfaces.clone(),
        });
        tokio::spawn(metrics::serve(
            listener,
            Arc::new(registry),
            stop_rx.clone(),
        ))
    });
    let ports: Vec<String> = args.ports.iter().map(ToString::to_string).collect();
    info!(
        ports = ports.join(","),
        ifaces = watcher.attached().join(","),
        pin_dir = %pin_dir.display(),
        sink = ?selected,
        event_bus,
        "capturing"
    );

    let capture = tokio::spawn(capture::run(
        ring,
        packet_tx,
        stats.clone(),
        stop_rx.clone(),
    ));
    let encode = tokio::spawn(encode_and_batch(
        packet_rx,
        batch_tx,
        encoder,
        Duration::from_millis(args.batch_linger_ms),
        stats.clone(),
    ));
    let mut sink: JoinHandle<Result<()>> = match eventbridge {
        None => {
            let stats = stats.clone();
            tokio::spawn(async move {
                sink::stdout::run(tokio::io::stdout(), batch_rx, stats)
                    .await
                    .context("writing events")
            })
        }
        Some(eb) => {
            let shutdown = stop_rx.clone();
            tokio::spawn(async move {
                eventbridge::run(eb, batch_rx, shutdown).await;
                Ok(())
            })
        }
    };

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
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
            r = &mut sink => {
                warn!("sink stopped early; shutting down");
                sink_result = Some(r);
                break;
            }
            _ = interface_poll.tick() => watcher.poll(&mut ebpf),
        }
    }

    // Detach first so the final ring drain sees everything the kernel wrote.
    watcher.detach_all(&mut ebpf);
    let _ = stop_tx.send(true);
    capture
        .await
        .context("capture task")?
        .context("draining the ring buffer")?;
    encode.await.context("encode task")?;
    let sink_result = match sink_result {
        Some(r) => r,
        None => sink.await,
    };

    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    report(
        &control.lock().expect("control lock"),
        &stats,
        eventbridge_stats.as_deref(),
    );
    sink_result.context("sink task")??;
    Ok(())
}

/// Encodes packets and groups them into batches for the sink (at most
/// `batch::MAX_ENTRIES` entries and 256 KB each, or whatever waited
/// `linger`), until `rx` closes. Public so that tests and benchmarks drive
/// the same path as `run`.
pub async fn encode_and_batch(
    mut rx: mpsc::Receiver<Packet>,
    tx: mpsc::Sender<Vec<Entry>>,
    mut encoder: Encoder,
    linger: Duration,
    stats: Arc<PipelineStats>,
) {
    let mut batcher = Batcher::default();
    let mut packets = Vec::with_capacity(RECV_MANY);
    let mut deadline: Option<Instant> = None;
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    let send = |batch: Vec<Entry>| {
        let tx = tx.clone();
        let stats = stats.clone();
        async move {
            let n = batch.len() as u64;
            stats.batched.fetch_add(n, Relaxed);
            if tx.send(batch).await.is_err() {
                stats.sink_failed.fetch_add(n, Relaxed);
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            // Everything waiting, up to a bound, per wake-up: the select
            // and the channel's bookkeeping are paid per call, not per
            // packet.
            n = rx.recv_many(&mut packets, RECV_MANY) => {
                if n == 0 {
                    break;
                }
                for packet in packets.drain(..) {
                    match batcher.push(encoder.encode(&packet)) {
                        Ok(Some(batch)) => send(batch).await,
                        Ok(None) => {}
                        Err(_) => count_drop(&stats.oversize, "entry larger than a PutEvents request; dropped"),
                    }
                    if batcher.is_full()
                        && let Some(batch) = batcher.take()
                    {
                        send(batch).await;
                    }
                }
                deadline = match (batcher.is_empty(), deadline) {
                    (true, _) => None,
                    (false, None) => Some(Instant::now() + linger),
                    (false, d) => d,
                };
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                deadline = None;
                if let Some(batch) = batcher.take() {
                    send(batch).await;
                }
            }
            _ = clock.tick() => encoder.set_clock(WallClock::now()),
        }
    }
    if let Some(batch) = batcher.take() {
        send(batch).await;
    }
}

/// Final counters on stderr, so an operator sees what the run did.
fn report(control: &Control, stats: &PipelineStats, eventbridge: Option<&EventBridgeStats>) {
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
    if let Some(eb) = eventbridge {
        info!("eventbridge counters: {}", eb.summary());
    }
}

/// Exits with a clear message if the build lacks the XDP object.
pub fn require_object() -> Result<()> {
    if loader::EBPF_OBJECT.is_empty() {
        bail!(loader::LoadError::NotEmbedded);
    }
    Ok(())
}
