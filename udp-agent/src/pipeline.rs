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
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::Map;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};
use udp_ebpf_common::Config;

use crate::{
    capture,
    cli::RunArgs,
    clock::WallClock,
    commands,
    control::{self, Control},
    encode::{Encoder, Entry},
    handoff::{self, Handoff},
    hotplug::{self, InterfaceStatus, Watcher},
    loader,
    metrics::{self, AgentCollector, SharedControl},
    privileges,
    reassembly::{self, Reassembler},
    record::Packet,
    ring::Ring,
    sink::{
        self, Selected,
        eventbridge::{self, EventBridgeSink, EventBridgeStats, Settings},
    },
    stats::PipelineStats,
};

/// Most packets [`encode_and_batch`] takes from its queue at once.
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
    let ring = match ebpf.take_map("EVENTS") {
        Some(Map::RingBuf(map)) => Ring::new(map).context("mapping the EVENTS ring buffer")?,
        _ => bail!("the eBPF object has no EVENTS ring buffer"),
    };

    let mut encoder = Encoder::new(&args.source, &args.detail_type, event_bus, WallClock::now());
    let (batch_tx, batch_rx) =
        mpsc::channel::<Vec<Entry>>(handoff::queue_batches(args.queue_capacity));
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

    let handoff = Handoff::new(
        encoder,
        batch_tx,
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
    let capture = tokio::spawn(capture::run(
        ring,
        handoff,
        reassembler,
        stats.clone(),
        stop_rx.clone(),
    ));
    let mut sink: JoinHandle<Result<()>> = match eventbridge {
        None => {
            let stats = stats.clone();
            tokio::task::spawn_blocking(move || {
                sink::stdout::run(std::io::stdout().lock(), batch_rx, stats)
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

/// Encodes packets from a channel and groups them into batches for the
/// sink, as the capture loop does with ring records ([`Handoff`]: batches of
/// at most `batch::MAX_ENTRIES` entries and 256 KB, or whatever waited
/// `linger`), until `rx` closes; then sends what waits. For tests and
/// benchmarks that feed packets without a kernel.
pub async fn encode_and_batch(
    mut rx: mpsc::Receiver<Packet>,
    tx: mpsc::Sender<Vec<Entry>>,
    encoder: Encoder,
    linger: Duration,
    stats: Arc<PipelineStats>,
) {
    let mut out = Handoff::new(encoder, tx, linger, stats.clone());
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
    info!(
        "reassembly: held at most {} bytes",
        stats
            .reassembly
            .peak_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    );
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
