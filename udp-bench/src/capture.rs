//! Scenario 2 — lossless capture rate, and scenario 4's soak.
//!
//! A paced sender offers fixed rates from the namespace into the veth pair.
//! By default it sends XDP frames ([`traffic::send_live`]): the root-side
//! veth then hands each frame to XDP the way a NIC driver hands over a
//! received page, with no socket buffer before the program. Frames from a
//! socket (`AF_PACKET`, trafgen) instead reach a veth's native XDP as socket
//! buffers that the veth first copies into a page of its own: measured
//! here, that alone costs ~1.2 µs per packet on the sender's CPU even when
//! the program returns XDP_PASS at once — a cost of the test rig that a
//! NIC does not have, and one that tcpdump and the socket reader (no XDP)
//! never pay. Where live frames are not available the `AF_PACKET` sender
//! ([`traffic::send_paced`]) is used and the report says so (trafgen
//! cannot pace above ~100k packets/s, see
//! [`traffic`]). For each payload size and each contender — the agent (XDP
//! in native mode, every packet encoded to its JSON entry and written by the
//! stdout sink to /dev/null) twice, observing (`--action pass`, the default)
//! and consuming (`--action drop`), `tcpdump -w /dev/null`, and a plain UDP
//! socket read with `recvmmsg` — the same search runs over the same frames
//! (each agent mode is reported against the peer that does the same to the
//! packet: tcpdump observes, the socket consumes): double
//! the rate while loss stays under 0.1%, then bisect between the last
//! lossless and the first lossy rate. Contenders run one at a time (each
//! alone with the sender on the machine), every step with a fresh process
//! so that its own end-of-run counters say where each loss happened.
//!
//! A step's rate is what the sender achieved (packets / send time), which
//! is below the rate asked for once the sender itself runs out of CPU; a
//! search that reaches the sender's limit without loss says so. What the
//! sender can offer drifts over the minutes the searches take, so in full
//! runs the contenders that reached it are then measured again together,
//! in interleaved rounds at one rate, and compared on the median
//! ([`confirm`]).
//!
//! Then the flood check: trafgen at full speed (a bounded number of the
//! same frames) into each contender in turn, and the share each one lost.

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use anyhow::Result;
use serde::Serialize;

use crate::{
    contenders::{Agent, Sink, SockReader, Tcpdump},
    netns::VethNs,
    proc::{check_interrupted, sleep},
    report::{Row, mib, thousands},
    search::{self, Found, Plan, Probe},
    traffic::{self, Sent},
};

pub const PORT: u16 = 5514;
/// The agent's default ring; tcpdump's packet ring and the socket's receive
/// buffer get the same.
pub const BUFFER_BYTES: u32 = 8 << 20;
/// "Lossless": less than 0.1% of the packets sent were not delivered.
const MAX_LOSS: f64 = 0.001;

pub struct Settings {
    pub sizes: Vec<usize>,
    pub step: Duration,
    pub start_pps: u64,
    pub max_doublings: usize,
    pub bisections: usize,
    /// Packets in the trafgen flood check.
    pub flood_packets: u64,
    pub soak: Duration,
    pub contenders: Vec<Contender>,
    /// Interleaved rounds re-measuring the sender-limited contenders (see
    /// [`confirm`]); none in quick runs.
    pub confirm_rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                sizes: vec![64, 1400],
                step: Duration::from_millis(700),
                start_pps: 100_000,
                max_doublings: 3,
                bisections: 1,
                flood_packets: 100_000,
                soak: Duration::from_secs(10),
                contenders: ALL.to_vec(),
                confirm_rounds: 0,
            }
        } else {
            Settings {
                sizes: vec![64, 1400],
                step: Duration::from_secs(3),
                start_pps: 50_000,
                max_doublings: 7,
                bisections: 4,
                flood_packets: 1_000_000,
                soak: Duration::from_secs(60),
                contenders: ALL.to_vec(),
                confirm_rounds: 5,
            }
        }
    }
}

const ALL: [Contender; 5] = [
    Contender::Agent,
    Contender::AgentDrop,
    Contender::AgentXsk,
    Contender::Tcpdump,
    Contender::Socket,
];

/// The agent runs twice: as an observer (the default `--action pass`: the
/// packet also goes on into the host's stack, which on this rig, with no
/// socket on the port, answers each one with an ICMP port unreachable) —
/// compared with tcpdump, the other observer — and as the port's consumer
/// (`--action drop`: nothing after XDP) — compared with the UDP socket, the
/// other consumer; as the consumer twice, through the ring buffer and
/// through AF_XDP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Contender {
    Agent,
    AgentDrop,
    /// `--action drop --capture-path afxdp`: the consumed port's frames
    /// redirected to the agent's AF_XDP socket (copy mode on veth).
    AgentXsk,
    Tcpdump,
    Socket,
    /// tcpdump while the agent's program is attached to the same veth in
    /// native mode for another port, so it passes every frame: what native
    /// XDP on the veth costs an observer (an experiment, not in `ALL`).
    TcpdumpXdp,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Agent => "udp-agent (XDP native → JSON → stdout sink to /dev/null)",
            Contender::AgentDrop => {
                "udp-agent --action drop --capture-path ringbuf (as above; the packet is consumed by XDP)"
            }
            Contender::AgentXsk => {
                "udp-agent --action drop --capture-path afxdp (the frame redirected to an AF_XDP socket, copy mode)"
            }
            Contender::Tcpdump => "tcpdump -w /dev/null (-B 8192, port filter)",
            Contender::Socket => "UDP socket + recvmmsg (8 MiB SO_RCVBUF)",
            Contender::TcpdumpXdp => {
                "tcpdump as above, with udp-agent attached for another port (every frame passes)"
            }
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Contender::Agent => "udp-agent",
            Contender::AgentDrop => "udp-agent --action drop",
            Contender::AgentXsk => "udp-agent AF_XDP",
            Contender::Tcpdump => "tcpdump",
            Contender::Socket => "UDP socket",
            Contender::TcpdumpXdp => "tcpdump+xdp",
        }
    }

    pub fn is_agent(self) -> bool {
        matches!(
            self,
            Contender::Agent | Contender::AgentDrop | Contender::AgentXsk
        )
    }

    /// The peer an agent mode is compared with: the one that does the same
    /// to the packet (observe it, or consume it).
    pub fn peer(self) -> Option<Contender> {
        match self {
            Contender::Agent => Some(Contender::Tcpdump),
            Contender::AgentDrop | Contender::AgentXsk => Some(Contender::Socket),
            _ => None,
        }
    }
}

impl Probe for Step {
    fn sent(&self) -> &Sent {
        &self.sent
    }
    fn lossless(&self) -> bool {
        self.lossless
    }
}

/// One offered load, one contender.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub sent: Sent,
    pub delivered: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub lossless: bool,
    /// Where the lost packets went, by the contender's own counters and
    /// the kernel's (netdev backlog, interface drops).
    pub losses: BTreeMap<String, u64>,
    pub max_rss_kib: u64,
    /// CPU time the contender's process used per packet it delivered, in
    /// microseconds, from the moment the traffic started to its exit (its
    /// start-up excluded; the kernel's receive path, which runs on the
    /// sender's CPU, is not in it).
    pub cpu_us_per_packet: f64,
    /// The contender's raw counters.
    pub counters: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Search {
    pub contender: Contender,
    pub label: &'static str,
    pub payload: usize,
    pub steps: Vec<Step>,
    /// The highest achieved rate with loss under 0.1%; for a search the
    /// sender limited, the median of the interleaved confirmation rounds
    /// when there were any ([`confirm`]).
    pub lossless_pps: Option<f64>,
    /// The search's own highest lossless achieved rate.
    pub search_pps: Option<f64>,
    /// The sender limited the search (it could not offer more).
    pub sender_limited: bool,
    /// The confirmation rounds' steps, in the order they ran.
    pub confirm_steps: Vec<Step>,
    /// Rate asked for at that step.
    pub lossless_nominal_pps: Option<u64>,
    /// What stopped the search from going higher.
    pub limited_by: String,
    pub max_rss_kib: u64,
}

pub struct Env<'a> {
    pub sender: traffic::Sender,
    pub agent: &'a Path,
    pub self_exe: &'a Path,
    pub ns: &'a VethNs,
    pub workdir: &'a Path,
}

/// Drops the kernel counts outside any contender: the per-CPU netdev
/// backlog (`/proc/net/softnet_stat`, second column), the root-side
/// interface's receive drops, and the namespace side's transmit drops
/// (veth counts a frame its peer could not take there).
#[derive(Clone, Copy, Default)]
struct SystemDrops {
    backlog: u64,
    host_rx: u64,
    ns_tx: u64,
}

fn system_drops(ns: &VethNs) -> SystemDrops {
    let backlog = fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum();
    let host_rx = fs::read_to_string(format!(
        "/sys/class/net/{}/statistics/rx_dropped",
        ns.host_if
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0);
    let ns_tx = std::process::Command::new("ip")
        .args([
            "-n", &ns.netns, "-j", "-s", "link", "show", "dev", &ns.ns_if,
        ])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v[0]["stats64"]["tx"]["dropped"].as_u64())
        .unwrap_or(0);
    SystemDrops {
        backlog,
        host_rx,
        ns_tx,
    }
}

/// Runs `send` into one fresh contender and accounts for every packet.
fn measure(
    env: &Env,
    who: Contender,
    payload: usize,
    send: &dyn Fn() -> Result<Sent>,
) -> Result<Step> {
    check_interrupted()?;
    let ns = env.ns;
    let mut losses = BTreeMap::new();
    let (sent, delivered, rss, cpu_s, counters, sys0) = match who {
        Contender::Agent | Contender::AgentDrop | Contender::AgentXsk => {
            let flags: &[&str] = match who {
                Contender::AgentDrop => &["--action", "drop", "--capture-path", "ringbuf"],
                Contender::AgentXsk => &["--action", "drop", "--capture-path", "afxdp"],
                _ => &[],
            };
            let agent = Agent::start_with(env.agent, &ns.host_if, PORT, &Sink::Null, flags)?;
            let sys0 = system_drops(ns);
            let cpu0 = agent.cpu_seconds();
            let sent = send()?;
            sleep(Duration::from_millis(100))?;
            let mut c = agent.stop()?;
            c.cpu_s -= cpu0;
            let seen = c.k("captured") + c.k("ring_full");
            losses.insert("before XDP".to_string(), sent.packets.saturating_sub(seen));
            losses.insert("kernel ring full".to_string(), c.k("ring_full"));
            losses.insert("AF_XDP socket full".to_string(), c.x("lost"));
            losses.insert("sink queue full".to_string(), c.p("queue_drops"));
            losses.insert(
                "encode/sink".to_string(),
                c.p("decoded")
                    .saturating_sub(c.p("queue_drops"))
                    .saturating_sub(c.p("emitted")),
            );
            let cpu = c.cpu_s;
            (
                sent,
                c.p("emitted"),
                c.max_rss_kib,
                cpu,
                serde_json::to_value(&c)?,
                sys0,
            )
        }
        Contender::Tcpdump | Contender::TcpdumpXdp => {
            let passing = match who {
                Contender::TcpdumpXdp => {
                    Some(Agent::start(env.agent, &ns.host_if, PORT + 1, &Sink::Null)?)
                }
                _ => None,
            };
            let t = Tcpdump::start(&ns.host_if, PORT, BUFFER_BYTES / 1024)?;
            let sys0 = system_drops(ns);
            let cpu0 = t.cpu_seconds();
            let sent = send()?;
            // tcpdump (libpcap's TPACKET_V3 ring) hands a block over when it
            // is full or after its 1 s timeout: wait for the last block.
            sleep(Duration::from_millis(1500))?;
            let mut c = t.stop()?;
            drop(passing);
            c.cpu_s -= cpu0;
            losses.insert(
                "dropped by kernel (tcpdump)".to_string(),
                c.dropped_by_kernel,
            );
            losses.insert(
                "before capture".to_string(),
                sent.packets
                    .saturating_sub(c.captured)
                    .saturating_sub(c.dropped_by_kernel),
            );
            let cpu = c.cpu_s;
            (
                sent,
                c.captured,
                c.max_rss_kib,
                cpu,
                serde_json::to_value(&c)?,
                sys0,
            )
        }
        Contender::Socket => {
            let bind = format!("{}:{PORT}", ns.host_v4);
            let r = SockReader::start(env.self_exe, &bind, BUFFER_BYTES)?;
            let sys0 = system_drops(ns);
            let cpu0 = r.cpu_seconds();
            let sent = send()?;
            sleep(Duration::from_millis(200))?;
            let mut c = r.stop()?;
            c.cpu_s -= cpu0;
            losses.insert("socket buffer full".to_string(), c.rcvbuf_errors);
            losses.insert(
                "before the socket".to_string(),
                sent.packets
                    .saturating_sub(c.received)
                    .saturating_sub(c.rcvbuf_errors),
            );
            let cpu = c.cpu_s;
            (
                sent,
                c.received,
                c.max_rss_kib,
                cpu,
                serde_json::to_value(&c)?,
                sys0,
            )
        }
    };
    let sys1 = system_drops(ns);
    // Informational: how much of "before …" the kernel counted itself.
    losses.insert(
        "(of which netdev backlog full)".into(),
        sys1.backlog.saturating_sub(sys0.backlog),
    );
    losses.insert(
        "(of which root veth rx_dropped)".into(),
        sys1.host_rx.saturating_sub(sys0.host_rx),
    );
    losses.insert(
        "(of which namespace veth tx_dropped)".into(),
        sys1.ns_tx.saturating_sub(sys0.ns_tx),
    );
    let lost = sent.packets.saturating_sub(delivered);
    let loss = lost as f64 / sent.packets.max(1) as f64;
    let s = Step {
        lossless: loss < MAX_LOSS,
        loss_pct: loss * 100.0,
        sent,
        delivered,
        lost,
        losses: losses.into_iter().filter(|(_, v)| *v > 0).collect(),
        max_rss_kib: rss,
        cpu_us_per_packet: cpu_s * 1e6 / delivered.max(1) as f64,
        counters,
    };
    eprintln!(
        "bench: capture: {:<10} {:>4} B  asked {:>7} pps  sent {:>7.0} pps  loss {:>7.3}%  {:>5.2} µs CPU/packet  {:?}",
        who.short(),
        payload,
        s.sent.nominal_pps,
        s.sent.pps,
        s.loss_pct,
        s.cpu_us_per_packet,
        s.losses
    );
    Ok(s)
}

/// One paced step: `rate` for `secs`.
pub fn step(env: &Env, who: Contender, frame: &[u8], rate: u64, secs: Duration) -> Result<Step> {
    let count = ((rate as f64 * secs.as_secs_f64()) as u64).max(1);
    let payload = frame.len() - traffic::HEADERS;
    measure(env, who, payload, &|| {
        env.sender.send(
            env.ns,
            frame,
            rate as f64,
            count,
            secs * 3 + Duration::from_secs(5),
        )
    })
}

/// The rate search for one contender and one payload size.
fn search(env: &Env, who: Contender, payload: usize, s: &Settings) -> Result<Search> {
    let frame = traffic::udp_frame(env.ns, PORT, payload);
    let plan = Plan {
        start_pps: s.start_pps as f64,
        max_doublings: s.max_doublings,
        bisections: s.bisections,
        // A step the sender could not fill may have lost CPU 0 for a
        // moment on this shared machine (the AF_PACKET sender's rate, for
        // one, varies from ~250k to ~550k packets/s from run to run).
        // Every contender gets the same retries.
        short_retries: 2,
        min_pps: 1000.0,
    };
    let Found {
        good,
        bad,
        sender_limited,
        steps,
    } = search::search(&plan, |rate| step(env, who, &frame, rate as u64, s.step))?;
    let limited_by = if sender_limited {
        "the sender's CPU, which also runs the receiving kernel path: it could not offer more"
            .to_string()
    } else {
        match &bad {
            Some(b) => format!(
                "at {} pps {:.2}% lost: {}",
                thousands(b.sent.pps),
                b.loss_pct,
                losses_text(&b.losses)
            ),
            None => "the search's highest step".into(),
        }
    };
    let max_rss_kib = steps.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
    Ok(Search {
        contender: who,
        label: who.label(),
        payload,
        lossless_pps: good.as_ref().map(|g| g.sent.pps),
        search_pps: good.as_ref().map(|g| g.sent.pps),
        sender_limited,
        confirm_steps: Vec::new(),
        lossless_nominal_pps: good.as_ref().map(|g| g.sent.nominal_pps),
        limited_by,
        max_rss_kib,
        steps,
    })
}

/// The searches run one contender after another, and on this VM what the
/// sender can offer drifts over minutes, so two contenders that both ran
/// the sender out of CPU would be compared across that drift. This
/// re-measures them together: `confirm_rounds` rounds, each one step per
/// such contender, in turn, at the highest asked rate any of them passed
/// without loss; each one's rate becomes the median of its lossless steps
/// there (a lossy step counts as no rate).
fn confirm(env: &Env, size: usize, searches: &mut [Search], s: &Settings) -> Result<()> {
    let limited: Vec<usize> = (0..searches.len())
        .filter(|&i| searches[i].sender_limited && searches[i].lossless_pps.is_some())
        .collect();
    if s.confirm_rounds == 0 || limited.len() < 2 {
        return Ok(());
    }
    let Some(rate) = limited
        .iter()
        .filter_map(|&i| searches[i].lossless_nominal_pps)
        .max()
    else {
        return Ok(());
    };
    let who: Vec<Contender> = limited.iter().map(|&i| searches[i].contender).collect();
    let steps = interleaved(env, &who, size, rate, s.confirm_rounds, s.step)?;
    for (&i, steps) in limited.iter().zip(steps) {
        let x = &mut searches[i];
        x.confirm_steps = steps;
        x.lossless_pps = median_lossless(&x.confirm_steps);
        x.lossless_nominal_pps = x.lossless_pps.map(|_| rate);
        x.limited_by = format!(
            "the sender's CPU, which also runs the receiving kernel path: median of {} rounds at {} pps asked, interleaved with the other sender-limited contenders ({}); the search alone reached {}",
            x.confirm_steps.len(),
            thousands(rate as f64),
            x.confirm_steps
                .iter()
                .map(|st| if st.lossless {
                    thousands(st.sent.pps)
                } else {
                    format!("{} lossy", thousands(st.sent.pps))
                })
                .collect::<Vec<_>>()
                .join(", "),
            x.search_pps.map_or("none".into(), thousands)
        );
        let max_rss = x.confirm_steps.iter().map(|st| st.max_rss_kib).max();
        x.max_rss_kib = x.max_rss_kib.max(max_rss.unwrap_or(0));
    }
    Ok(())
}

/// `rounds` rounds of one step per contender in `who`, in turn, all at one
/// asked rate: each contender's steps, in `who`'s order.
fn interleaved(
    env: &Env,
    who: &[Contender],
    size: usize,
    rate: u64,
    rounds: usize,
    secs: Duration,
) -> Result<Vec<Vec<Step>>> {
    let frame = traffic::udp_frame(env.ns, PORT, size);
    let mut out = vec![Vec::new(); who.len()];
    for _ in 0..rounds {
        for (&c, steps) in who.iter().zip(&mut out) {
            steps.push(step(env, c, &frame, rate, secs)?);
        }
    }
    Ok(out)
}

/// An experiment (`udp-bench rounds`): `rounds` interleaved rounds of one
/// step per contender at one asked rate, then each contender's median
/// achieved rate (a lossy step counting as none) and median CPU per packet.
pub fn rounds(
    env: &Env,
    who: &[Contender],
    size: usize,
    rate: u64,
    rounds: usize,
    secs: Duration,
) -> Result<Vec<(Contender, Vec<Step>)>> {
    let steps = interleaved(env, who, size, rate, rounds, secs)?;
    let out: Vec<(Contender, Vec<Step>)> = who.iter().copied().zip(steps).collect();
    for (c, steps) in &out {
        let mut cpu: Vec<f64> = steps.iter().map(|s| s.cpu_us_per_packet).collect();
        cpu.sort_by(f64::total_cmp);
        eprintln!(
            "bench: rounds: {:<24} {size:>4} B  median lossless {:>9}  median {:.2} µs CPU/packet",
            c.short(),
            median_lossless(steps).map_or("none".into(), |r| format!("{} pps", thousands(r))),
            cpu.get(cpu.len() / 2).copied().unwrap_or(0.0)
        );
    }
    Ok(out)
}

/// The median achieved rate of `steps`, a lossy step counting as no rate
/// (so more than half lossy is `None`).
fn median_lossless(steps: &[Step]) -> Option<f64> {
    let mut rates: Vec<f64> = steps
        .iter()
        .map(|st| if st.lossless { st.sent.pps } else { 0.0 })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = *rates.get(rates.len() / 2)?;
    (median > 0.0).then_some(median)
}

fn losses_text(losses: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = losses
        .iter()
        .map(|(k, v)| format!("{k} {}", thousands(*v as f64)))
        .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// The flood check: trafgen at full speed into one contender.
#[derive(Clone, Debug, Serialize)]
pub struct Flood {
    pub contender: Contender,
    pub payload: usize,
    pub step: Step,
}

#[derive(Debug, Serialize)]
pub struct CaptureResults {
    pub port: u16,
    pub step_seconds: f64,
    pub max_loss_pct: f64,
    pub sender: String,
    pub searches: Vec<Search>,
    pub floods: Vec<Flood>,
}

pub fn run(env: &Env, s: &Settings) -> Result<(CaptureResults, Vec<Row>)> {
    let mut searches = Vec::new();
    let mut floods = Vec::new();
    for &size in &s.sizes {
        let first = searches.len();
        for &who in &s.contenders {
            searches.push(search(env, who, size, s)?);
        }
        confirm(env, size, &mut searches[first..], s)?;
        let frame = traffic::udp_frame(env.ns, PORT, size);
        let conf = traffic::write_trafgen_config(env.workdir, &format!("udp-{size}.cfg"), &frame)?;
        for &who in &s.contenders {
            let limit = Duration::from_secs(60);
            let step = measure(env, who, size, &|| {
                traffic::trafgen(env.ns, &conf, s.flood_packets, limit)
            })?;
            floods.push(Flood {
                contender: who,
                payload: size,
                step,
            });
        }
    }
    let rows = rows(&searches, &floods);
    Ok((
        CaptureResults {
            port: PORT,
            step_seconds: s.step.as_secs_f64(),
            max_loss_pct: MAX_LOSS * 100.0,
            sender: format!(
                "{}; flood: trafgen full speed on CPU 0",
                env.sender.describe()
            ),
            searches,
            floods,
        },
        rows,
    ))
}

fn rate_text(s: &Search) -> String {
    match s.lossless_pps {
        Some(r) => format!("{} pps", thousands(r)),
        None => "none lossless".into(),
    }
}

fn rows(searches: &[Search], floods: &[Flood]) -> Vec<Row> {
    let mut rows = Vec::new();
    for ours in searches.iter().filter(|s| s.contender.is_agent()) {
        let peers = searches
            .iter()
            .filter(|s| s.payload == ours.payload && Some(s.contender) == ours.contender.peer());
        for peer in peers {
            let mut row = Row::new(
                2,
                format!(
                    "lossless capture rate, {} B payload ({} vs {})",
                    ours.payload,
                    ours.contender.short(),
                    peer.contender.short()
                ),
                "packets/s",
            );
            row.ours = rate_text(ours);
            row.peer = format!(
                "{}<br><sub>limit: {}</sub>",
                rate_text(peer),
                peer.limited_by
            );
            row.note = format!("limit: {}", ours.limited_by);
            row.ours_value = ours.lossless_pps;
            row.peer_value = peer.lossless_pps;
            row.ratio = match (ours.lossless_pps, peer.lossless_pps) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            row.ratio_note = "higher is better".into();
            if ours.payload == 64 && peer.contender == Contender::Tcpdump {
                let o = ours.lossless_pps.unwrap_or(0.0);
                row.target = Some("≥ 400,000 pps and ≥ tcpdump".into());
                row.met = Some(o >= 400_000.0 && o >= peer.lossless_pps.unwrap_or(0.0));
            }
            if ours.contender == Contender::AgentXsk {
                row.target = Some("≥ 1.0× the UDP socket".into());
                row.met = row.ratio.map(|r| r >= 1.0);
            }
            rows.push(row);
        }
    }
    let mut sizes: Vec<usize> = searches.iter().map(|s| s.payload).collect();
    sizes.dedup();
    for size in sizes {
        if let Some(ours_flood) = floods
            .iter()
            .find(|f| f.payload == size && f.contender == Contender::Agent)
        {
            let mut row = Row::new(
                2,
                format!("trafgen flood at full speed, {size} B payload: share lost"),
                "% lost",
            );
            row.ours = format!(
                "{:.2}% of {} at {} pps",
                ours_flood.step.loss_pct,
                thousands(ours_flood.step.sent.packets as f64),
                thousands(ours_flood.step.sent.pps)
            );
            row.note = losses_text(&ours_flood.step.losses);
            let peers: Vec<String> = floods
                .iter()
                .filter(|f| f.payload == size && f.contender != Contender::Agent)
                .map(|f| {
                    format!(
                        "{} {:.2}% at {} pps",
                        f.contender.short(),
                        f.step.loss_pct,
                        thousands(f.step.sent.pps)
                    )
                })
                .collect();
            row.peer = peers.join("; ");
            row.ours_value = Some(ours_flood.step.loss_pct);
            rows.push(row);
        }
        let ours_rss = searches
            .iter()
            .filter(|s| s.payload == size && s.contender.is_agent())
            .map(|s| s.max_rss_kib)
            .max();
        if let Some(ours_rss) = ours_rss {
            let mut mem = Row::new(
                4,
                format!("peak RSS during the capture runs, {size} B"),
                "KiB",
            );
            mem.ours = mib(ours_rss);
            let peers: Vec<String> = searches
                .iter()
                .filter(|s| s.payload == size && !s.contender.is_agent())
                .map(|s| format!("{} {}", s.contender.short(), mib(s.max_rss_kib)))
                .collect();
            mem.peer = peers.join(", ");
            mem.ours_value = Some(ours_rss as f64);
            mem.target = Some("≤ 64 MiB".into());
            mem.met = Some(ours_rss <= 64 * 1024);
            rows.push(mem);
        }
    }
    rows
}

/// Scenario 4's soak: the agent at `rate` (64-byte payloads) for the soak
/// time, its RSS sampled every second.
#[derive(Debug, Serialize)]
pub struct Soak {
    pub nominal_pps: u64,
    pub seconds: f64,
    pub sent: Option<Sent>,
    pub rss_kib: Vec<u64>,
    pub first_kib: u64,
    pub last_kib: u64,
    pub max_kib: u64,
    pub peak_hwm_kib: u64,
    /// `RssAnon` samples, one per `rss_kib` sample: what flatness is
    /// judged on.
    pub anon_kib: Vec<u64>,
    pub lost: u64,
    pub loss_pct: f64,
    pub counters: serde_json::Value,
}

pub fn soak(env: &Env, rate: u64, duration: Duration) -> Result<(Soak, Row)> {
    let frame = traffic::udp_frame(env.ns, PORT, 64);
    let agent = Agent::start(env.agent, &env.ns.host_if, PORT, &Sink::Null)?;
    let count = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut samples = Vec::new();
    let sent = std::thread::scope(|sc| -> Result<Sent> {
        let sender = sc.spawn(|| {
            env.sender
                .send(env.ns, &frame, rate as f64, count, duration * 2)
        });
        while !sender.is_finished() {
            samples.extend(agent.memory());
            // Sampling continues through an interrupt; the sender stops itself.
            let _ = sleep(Duration::from_secs(1));
        }
        sender
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    samples.extend(agent.memory());
    sleep(Duration::from_millis(100))?;
    let c = agent.stop()?;
    let lost = sent.packets.saturating_sub(c.p("emitted"));
    let rss: Vec<u64> = samples.iter().map(|m| m.rss_kib).collect();
    let anon: Vec<u64> = samples.iter().map(|m| m.anon_kib).collect();
    let first = rss.first().copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let max = rss.iter().copied().max().unwrap_or(0);
    let anon_first = anon.first().copied().unwrap_or(0);
    let anon_last = anon.last().copied().unwrap_or(0);
    let s = Soak {
        nominal_pps: rate,
        seconds: sent.secs,
        loss_pct: lost as f64 / sent.packets.max(1) as f64 * 100.0,
        sent: Some(sent),
        rss_kib: rss,
        first_kib: first,
        last_kib: last,
        max_kib: max,
        peak_hwm_kib: c.max_rss_kib,
        anon_kib: anon,
        lost,
        counters: serde_json::to_value(&c)?,
    };
    let achieved = s.sent.as_ref().map_or(0.0, |x| x.pps);
    let mut row = Row::new(
        4,
        format!(
            "agent RSS over a {:.0} s soak at {} pps (64 B, the highest lossless rate)",
            duration.as_secs_f64(),
            thousands(achieved)
        ),
        "KiB",
    );
    row.ours = format!(
        "first {} / last {} / max {} (peak {}); of it anonymous (heap, stacks): first {} / last {}",
        mib(first),
        mib(last),
        mib(max),
        mib(s.peak_hwm_kib),
        mib(anon_first),
        mib(anon_last)
    );
    row.note = format!(
        "{:.3}% lost during the soak; flat = the anonymous part grew by at most a tenth or 2 MiB (the rest is file-backed: the binary's code as it first runs, and the mapped ring, bounded by their size)",
        s.loss_pct
    );
    row.peer = String::new();
    row.ours_value = Some(s.peak_hwm_kib as f64);
    row.target = Some("≤ 64 MiB, flat".into());
    let flat = flat(anon_first, anon_last);
    row.met = Some(s.peak_hwm_kib <= 64 * 1024 && flat);
    Ok((s, row))
}

/// Flat: the last sample (KiB) within a tenth, or 2 MiB, of the first.
fn flat(first_kib: u64, last_kib: u64) -> bool {
    last_kib <= first_kib + (first_kib / 10).max(2048)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_allows_a_tenth_or_two_mib_and_no_more() {
        assert!(flat(6_616, 6_616));
        assert!(flat(6_616, 6_616 + 2_048));
        assert!(!flat(6_616, 6_616 + 2_049));
        assert!(flat(30_000, 33_000));
        assert!(!flat(30_000, 33_001));
        // Shrinking is flat.
        assert!(flat(30_000, 20_000));
    }

    fn step(pps: f64, lossless: bool) -> Step {
        Step {
            sent: Sent {
                nominal_pps: 800_000,
                packets: 1,
                secs: 1.0,
                pps,
                cpu_s: 0.0,
                softirqd_cpu_s: 0.0,
            },
            delivered: 1,
            lost: 0,
            loss_pct: 0.0,
            lossless,
            losses: BTreeMap::new(),
            max_rss_kib: 0,
            cpu_us_per_packet: 0.0,
            counters: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_confirmed_rate_is_the_median_with_lossy_rounds_counting_as_none() {
        let m = |v: &[(f64, bool)]| {
            median_lossless(&v.iter().map(|&(p, l)| step(p, l)).collect::<Vec<_>>())
        };
        assert_eq!(
            m(&[(600e3, true), (500e3, true), (700e3, true)]),
            Some(600e3)
        );
        assert_eq!(
            m(&[(900e3, false), (500e3, true), (700e3, true)]),
            Some(500e3)
        );
        assert_eq!(m(&[(900e3, false), (800e3, false), (700e3, true)]), None);
        assert_eq!(m(&[]), None);
    }
}
