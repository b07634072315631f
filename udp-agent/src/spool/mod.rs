//! The spool: every batch accepted from capture, held on disk until the
//! sink acknowledges it, so that an outage, a throttling storm, a restart
//! or a crash does not cost an event.
//!
//! ```text
//! handoff ──batches──► spool task ──Delivery{batch, Ack}──► sink
//!                        │   ▲                                │
//!                        ▼   └──────── Ack::done ─────────────┘
//!                  <dir>/<id>.seg  <dir>/<id>.ack
//! ```
//!
//! The task ([`Spool::serve`]) owns a [`store::Store`]: it appends what
//! the handoff sends, hands the
//! sink the oldest batches first (a restart's backlog and new traffic in
//! turn), and forgets a batch once its `Ack` is done. The on-disk format is
//! in [`segment`], a batch's encoding in [`codec`].
//!
//! What each `--spool-fsync` policy survives (a batch counts as accepted
//! once the spool has written it, at most a few milliseconds after capture):
//!
//! | policy | SIGTERM | SIGKILL, a crash | power loss, kernel crash |
//! |---|---|---|---|
//! | `always` | nothing lost | nothing lost | nothing lost (each write is `fdatasync`ed before its batch is sent) |
//! | `interval` (default, 1 s) | nothing lost | nothing lost | up to the last interval |
//! | `never` | nothing lost | nothing lost | what the kernel had not written back (up to ~30 s) |
//!
//! Every policy survives a process's death, because the data is in the
//! kernel's page cache the moment `write` returns. After a crash the sink
//! may send again what was in flight (delivery is at least once): at most
//! the batches that were handed to the sink and not yet acknowledged,
//! --max-in-flight plus a few queued. A record torn by a crash mid-write is
//! found by its checksum when the spool is next opened, counted
//! (`torn_records`) and skipped.

pub mod codec;
pub mod segment;
pub mod store;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    encode::Entry,
    sink::{Ack, Delivery, Settled},
    stats::{Sample, doubled},
};

pub use self::store::Store;

/// How often the task refreshes its gauges and checks the sync interval.
const TICK: Duration = Duration::from_millis(100);
/// Batches taken from the handoff per write.
const APPEND_MANY: usize = 256;

/// `--spool-fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` after every write, before its batches go to the sink.
    Always,
    /// `fdatasync` at most this often.
    Interval(Duration),
    /// Leave it to the kernel's writeback.
    Never,
}

/// `--spool-full`: what goes when the spool has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FullPolicy {
    /// Refuse new batches (what is spooled is kept).
    DropNewest,
    /// Delete the oldest segments to make room.
    DropOldest,
}

/// Why batches were dropped by the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No room within --spool-max-bytes (drop-newest).
    Full,
    /// Deleted with the oldest segment to make room (drop-oldest).
    Oldest,
    /// The disk refused the write (full disk, I/O error).
    WriteError,
    /// A batch that cannot be encoded, or a record that does not decode.
    Unencodable,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::Full,
        DropReason::Oldest,
        DropReason::WriteError,
        DropReason::Unencodable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Full => "full",
            DropReason::Oldest => "oldest",
            DropReason::WriteError => "write_error",
            DropReason::Unencodable => "unencodable",
        }
    }

    fn warning(self) -> &'static str {
        match self {
            DropReason::Full => {
                "spool full (--spool-max-bytes): dropping new batches until the sink catches up (--spool-full drop-oldest keeps the newest instead)"
            }
            DropReason::Oldest => {
                "spool full (--spool-max-bytes): deleting the oldest batches to make room (--spool-full drop-newest keeps them instead)"
            }
            DropReason::WriteError => "spool: dropping batches that could not be written",
            DropReason::Unencodable => "spool: dropping a batch that cannot be stored",
        }
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("{what} the spool directory {}: {source}", dir.display())]
    Io {
        what: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the spool directory {} is in use by another udp-agent; give each agent its own --spool-dir",
        .0.display()
    )]
    Locked(PathBuf),
}

/// The spool's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub max_bytes: u64,
    pub full: FullPolicy,
}

/// The spool's counters and gauges.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Bytes on disk (segments and ack files).
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    /// Batches, and their entries, not yet acknowledged.
    pub batches: AtomicU64,
    pub entries: AtomicU64,
    /// Bytes of batches not yet handed to the sink.
    pub backlog_bytes: AtomicU64,
    /// Capture time (ms since the epoch) of the oldest batch not yet
    /// acknowledged; 0 when there is none.
    pub oldest_ms: AtomicU64,
    /// Less than a segment of room left within --spool-max-bytes.
    pub full: AtomicBool,
    /// The last write failed (a full disk); cleared by the next that works.
    pub failing: AtomicBool,
    pub written_batches: AtomicU64,
    pub written_entries: AtomicU64,
    /// Batches read back from disk (rather than from memory) for the sink.
    pub read_batches: AtomicU64,
    pub acked_batches: AtomicU64,
    /// Damaged stretches found when opening the spool, each skipped.
    pub torn_records: AtomicU64,
    pub write_errors: AtomicU64,
    pub ack_write_errors: AtomicU64,
    pub syncs: AtomicU64,
    pub dropped_batches: AtomicU64,
    /// Entries dropped, by [`DropReason`] (in `DropReason::ALL` order).
    dropped_entries: [AtomicU64; 4],
}

impl SpoolStats {
    /// Counts dropped batches and warns at a doubling interval.
    pub fn count_dropped(&self, reason: DropReason, batches: u64, entries: u64) {
        if batches == 0 {
            return;
        }
        self.dropped_batches.fetch_add(batches, Relaxed);
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        let before = self.dropped_entries[i].fetch_add(entries, Relaxed);
        if doubled(before, before + entries) {
            warn!(
                total = before + entries,
                reason = reason.name(),
                "{}",
                reason.warning()
            );
        }
    }

    /// Entries dropped for `reason`.
    pub fn dropped_entries(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.dropped_entries[i].load(Relaxed)
    }

    /// Seconds since the oldest batch not yet acknowledged was captured.
    pub fn oldest_age(&self) -> Duration {
        match self.oldest_ms.load(Relaxed) {
            0 => Duration::ZERO,
            ms => store::age(ms),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut out = vec![
            Sample::gauge(
                "spool_bytes",
                "Bytes the spool holds on disk",
                g(&self.bytes),
            ),
            Sample::gauge(
                "spool_segments",
                "Segment files in the spool",
                g(&self.segments),
            ),
            Sample::gauge(
                "spool_batches",
                "Batches in the spool not yet acknowledged by the sink",
                g(&self.batches),
            ),
            Sample::gauge(
                "spool_entries",
                "Entries in the spool not yet acknowledged by the sink",
                g(&self.entries),
            ),
            Sample::gauge(
                "spool_backlog_bytes",
                "Bytes of spooled batches not yet handed to the sink (the replay backlog)",
                g(&self.backlog_bytes),
            ),
            Sample::gauge(
                "spool_oldest_age_seconds",
                "Seconds since the oldest unacknowledged batch in the spool was captured (0: none)",
                self.oldest_age().as_secs(),
            ),
            Sample::gauge(
                "spool_full",
                "1 while less than a segment of room is left within --spool-max-bytes",
                u64::from(self.full.load(Relaxed)),
            ),
            Sample::gauge(
                "spool_write_failing",
                "1 while writes to the spool fail (a full disk): new batches are dropped",
                u64::from(self.failing.load(Relaxed)),
            ),
            Sample::counter(
                "spool_written_batches",
                "Batches written to the spool",
                g(&self.written_batches),
            ),
            Sample::counter(
                "spool_written_entries",
                "Entries written to the spool",
                g(&self.written_entries),
            ),
            Sample::counter(
                "spool_read_batches",
                "Batches read back from disk for the sink (a backlog or a replay)",
                g(&self.read_batches),
            ),
            Sample::counter(
                "spool_acked_batches",
                "Batches the sink acknowledged (delivered, or given up and dead-lettered)",
                g(&self.acked_batches),
            ),
            Sample::counter(
                "spool_torn_records",
                "Damaged stretches (torn writes, corruption) found and skipped when the spool was opened",
                g(&self.torn_records),
            ),
            Sample::counter(
                "spool_write_errors",
                "Failed spool writes, syncs and reads",
                g(&self.write_errors),
            ),
            Sample::counter("spool_syncs", "fdatasync calls", g(&self.syncs)),
        ];
        for reason in DropReason::ALL {
            out.push(
                Sample::counter(
                    "spool_dropped_entries",
                    "Entries the spool dropped, by reason",
                    self.dropped_entries(reason),
                )
                .labelled("reason", reason.name()),
            );
        }
        out
    }
}

/// An open spool, ready to run.
pub struct Spool {
    store: Store,
    stats: Arc<SpoolStats>,
}

impl Spool {
    /// Opens the directory (creating it), locks it against a second agent,
    /// and reads what earlier runs left.
    pub fn open(settings: &Settings) -> Result<Spool, SpoolError> {
        let stats = Arc::new(SpoolStats::default());
        let store = Store::open(
            store::Config {
                dir: settings.dir.clone(),
                max_bytes: settings.max_bytes,
                full: settings.full,
                fsync: settings.fsync,
                segment_bytes: store::Config::segment_bytes_for(settings.max_bytes),
            },
            stats.clone(),
        )?;
        Ok(Spool { store, stats })
    }

    pub fn stats(&self) -> Arc<SpoolStats> {
        self.stats.clone()
    }

    /// Spools what `input` brings and feeds `output`, oldest first. Once
    /// `input` has closed (the capture side is done: shutdown), it keeps
    /// feeding until the sink stops taking (it closes `output`) or nothing
    /// is left, waits for what is handed out to be settled, and closes the
    /// store. Its file I/O blocks (writes to the page cache, and with
    /// `--spool-fsync always` the syncs), so it runs on the delivery thread
    /// beside the sink, whose acknowledgements then reach it without
    /// waking another thread.
    pub async fn serve(
        mut self,
        mut input: mpsc::Receiver<Vec<Entry>>,
        output: mpsc::Sender<Delivery>,
    ) {
        let store = &mut self.store;
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let settle = |store: &mut Store, s: Settled| match s {
            Settled::Done(held) => store.ack(held),
            Settled::Released(held) => store.release(held),
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut input_open = true;
        let mut batches = Vec::with_capacity(APPEND_MANY);
        loop {
            let sink_gone = output.is_closed();
            if !input_open && store.outstanding() == 0 && (sink_gone || !store.has_next()) {
                break;
            }
            let feed = !sink_gone && store.has_next();
            tokio::select! {
                biased;
                Some(s) = ack_rx.recv() => {
                    settle(store, s);
                    while let Ok(s) = ack_rx.try_recv() {
                        settle(store, s);
                    }
                    store.flush_acks();
                }
                permit = output.reserve(), if feed => {
                    // An error: the sink closed its input; the loop sees it.
                    if let Ok(permit) = permit
                        && let Some((held, entries)) = store.next_batch()
                    {
                        permit.send(Delivery { entries, ack: Ack::spooled(held, ack_tx.clone()) });
                    }
                }
                n = input.recv_many(&mut batches, APPEND_MANY), if input_open => {
                    if n == 0 {
                        input_open = false;
                        continue;
                    }
                    for batch in batches.drain(..) {
                        if let Err((batch, reason)) = store.append(batch) {
                            self.stats.count_dropped(reason, 1, batch.len() as u64);
                        }
                    }
                    store.flush();
                }
                _ = tick.tick() => {
                    if let Some(files) = store.due_sync(std::time::Instant::now()) {
                        let stats = self.stats.clone();
                        // Off this thread: the sink shares it.
                        tokio::task::spawn_blocking(move || store::sync_files(files, &stats));
                    }
                    store.update_gauges();
                }
            }
        }
        // The sink's input ends here; deliveries it still holds are settled
        // (done or released) as it finishes.
        drop(output);
        drop(ack_tx);
        while let Some(s) = ack_rx.recv().await {
            settle(store, s);
        }
        store.close();
    }
}
