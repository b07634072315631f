//! The spool's state: its segments on disk, the writer, the two readers,
//! and what the sink has acknowledged. Synchronous and single-owner: the
//! spool task ([`super::run`]) drives it, and the model test drives it
//! directly.
//!
//! - **Writing.** [`Store::append`] frames a batch into a write buffer;
//!   [`Store::flush`] writes the buffer with one `write` (then, by the
//!   fsync policy, `fdatasync`). Only flushed records can be read. A
//!   segment is sealed and a new one started when the next record would
//!   take it past the segment size. A failed write is cut back off the
//!   file (`ftruncate`), so the segment ends with whole records whatever
//!   the disk did; its batches are counted dropped.
//! - **Reading.** Segments from earlier runs are the *replay* range, this
//!   run's the *live* range; each has a reader, and [`Store::next_batch`]
//!   alternates between them, so a backlog left by a restart and new
//!   traffic share the sink. Records already acknowledged (listed in the
//!   segment's ack file) are skipped. The newest flushed batches stay in a
//!   small in-memory cache, so a sink that keeps up gets them without a
//!   read or a decode.
//! - **Acknowledging.** [`Store::ack`] marks a record done and appends its
//!   index to the segment's ack file; a sealed segment whose records are
//!   all done is deleted with its ack file.
//! - **Bounds.** The segments' bytes stay within `max_bytes`: a batch that
//!   does not fit is dropped (`drop-newest`), or the oldest segments are
//!   deleted until it does (`drop-oldest`). Either way it is counted.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::{
    DropReason, FsyncPolicy, FullPolicy, SpoolError, SpoolStats, codec,
    segment::{self, HEADER_LEN, Item, RecordMeta},
};
use crate::{encode::Entry, sink::Held, stats::doubled};

/// Bytes of recently flushed batches kept in memory for the live reader.
pub const CACHE_BYTES: usize = 8 << 20;
/// A segment whose batches are all acknowledged is replaced by a new one
/// once it holds this much, so that the space of what was delivered comes
/// back in steady state too (a sealed, fully acknowledged segment is
/// deleted at once).
const IDLE_ROTATE_BYTES: u64 = 1 << 20;

/// How the store is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub full: FullPolicy,
    pub fsync: FsyncPolicy,
    /// A segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Config {
    /// Segments a 32nd of the spool (between 64 KiB and 32 MiB): small
    /// enough that deleting the oldest frees little at a time, large
    /// enough that files stay few.
    pub fn segment_bytes_for(max_bytes: u64) -> u64 {
        (max_bytes / 32).clamp(64 << 10, 32 << 20)
    }
}

/// A set of record indexes.
#[derive(Clone, Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; true if it was clear.
    fn set(&mut self, i: u32) -> bool {
        let w = i as usize / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << (i % 64)) != 0;
        self.0[w] |= 1 << (i % 64);
        !was
    }
}

#[derive(Debug)]
struct Segment {
    /// File bytes (header and whole records).
    bytes: u64,
    /// Records found (sealed) or written (the writer's).
    records: u32,
    /// Records acknowledged, this run or (from the ack file) before.
    acked: Bits,
    /// Whole records not acknowledged, and their entries.
    unacked: u32,
    unacked_entries: u64,
    /// No more records will be written to it.
    sealed: bool,
    ack_file: Option<File>,
    /// Acknowledgements not yet appended to the ack file.
    ack_buf: Vec<u8>,
}

/// The segment being written.
#[derive(Debug)]
struct Writer {
    id: u64,
    file: File,
    /// Bytes written (and readable).
    len: u64,
}

/// A record framed but not yet written.
#[derive(Debug)]
struct Pending {
    held: Held,
    time_ms: u64,
    start: u64,
    end: u64,
}

/// A flushed batch kept for the live reader.
#[derive(Debug)]
struct Cached {
    held: Held,
    start: u64,
    end: u64,
    time_ms: u64,
    batch: Vec<Entry>,
}

/// Reads one range of segments in order.
#[derive(Debug, Default)]
struct Cursor {
    /// Segments still to read, the current one first.
    queue: VecDeque<u64>,
    /// The current segment's reader, once opened.
    reader: Option<(u64, segment::Reader)>,
    /// Where the next record of the current segment starts.
    pos: u64,
}

impl Cursor {
    fn current(&self) -> Option<u64> {
        self.queue.front().copied()
    }

    /// Moves past the current segment.
    fn advance(&mut self) {
        self.queue.pop_front();
        self.reader = None;
        self.pos = HEADER_LEN;
    }
}

/// What one call of [`Store::flush`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub batches: u64,
    pub entries: u64,
}

pub struct Store {
    cfg: Config,
    stats: Arc<SpoolStats>,
    /// Every segment on disk, by id.
    segments: BTreeMap<u64, Segment>,
    writer: Option<Writer>,
    next_id: u64,
    /// Segments of earlier runs.
    replay: Cursor,
    /// This run's segments.
    live: Cursor,
    /// Whose turn [`Store::next_batch`] serves first.
    replay_first: bool,
    /// Framed records waiting for [`Store::flush`], with their batches.
    pending: Vec<(Pending, Vec<Entry>)>,
    /// Their bytes, as written.
    frame: Vec<u8>,
    /// The payload of the record being framed (reused).
    scratch: Vec<u8>,
    cache: VecDeque<Cached>,
    cache_bytes: usize,
    /// Handed to the sink and not yet acknowledged: capture time (ms).
    outstanding: HashMap<Held, u64>,
    /// Bytes on disk (segments and ack files).
    disk_bytes: u64,
    /// Sealed segments written since the last sync (policies other than
    /// `never`), by id. A segment deleted meanwhile leaves this list at
    /// once: an open descriptor would keep its disk space taken.
    unsynced: Vec<(u64, File)>,
    /// When data was first written after the last sync.
    unsynced_since: Option<Instant>,
    last_sync: Instant,
    dir_file: File,
    _lock: File,
}

impl Store {
    /// Opens (creating) the spool directory, takes its lock, and reads
    /// what earlier runs left: every record checked, torn ones counted.
    pub fn open(cfg: Config, stats: Arc<SpoolStats>) -> Result<Store, SpoolError> {
        let dir = &cfg.dir.clone();
        let io = |what: &'static str| {
            let dir = dir.clone();
            move |source| SpoolError::Io { what, dir, source }
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating"))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(io("opening the lock file of"))?;
        // SAFETY: a valid fd owned by `lock`; the lock lives as long as it.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(SpoolError::Locked(dir.clone()));
        }
        let dir_file = File::open(dir).map_err(io("opening"))?;
        let mut store = Store {
            segments: BTreeMap::new(),
            writer: None,
            next_id: 1,
            replay: Cursor::default(),
            live: Cursor::default(),
            replay_first: true,
            pending: Vec::new(),
            frame: Vec::new(),
            scratch: Vec::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            outstanding: HashMap::new(),
            disk_bytes: 0,
            unsynced: Vec::new(),
            unsynced_since: None,
            last_sync: Instant::now(),
            dir_file,
            _lock: lock,
            stats,
            cfg,
        };
        store.load().map_err(io("reading"))?;
        store.update_gauges();
        Ok(store)
    }

    /// Reads every segment an earlier run left, in id order.
    fn load(&mut self) -> io::Result<()> {
        let dir = self.cfg.dir.clone();
        let (mut segs, mut acks) = (Vec::new(), Vec::new());
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            match segment::parse_name(&name) {
                Some((id, true)) => segs.push(id),
                Some((id, false)) => acks.push(id),
                None => {}
            }
        }
        segs.sort_unstable();
        let (mut batches, mut entries, mut torn) = (0u64, 0u64, 0u64);
        for &id in &segs {
            self.next_id = self.next_id.max(id + 1);
            let path = segment::segment_path(&dir, id);
            let Some(mut reader) = segment::Reader::open(&path, id)? else {
                // Created, but its header never made it: nothing in it.
                warn!(path = %path.display(), "spool: removing a segment without a whole header");
                remove(&path);
                remove(&segment::ack_path(&dir, id));
                continue;
            };
            let ack_bytes = fs::read(segment::ack_path(&dir, id)).unwrap_or_default();
            let mut acked = Bits::default();
            for i in segment::read_acks(&ack_bytes) {
                acked.set(i);
            }
            let mut seg = Segment {
                bytes: fs::metadata(&path)?.len(),
                records: 0,
                acked,
                unacked: 0,
                unacked_entries: 0,
                sealed: true,
                ack_file: None,
                ack_buf: Vec::new(),
            };
            loop {
                match reader.read_next()? {
                    Item::Record { meta, .. } => {
                        seg.records += 1;
                        if !seg.acked.get(meta.index) {
                            seg.unacked += 1;
                            seg.unacked_entries += u64::from(meta.entries);
                        }
                    }
                    Item::Damaged { at, skipped } => {
                        torn += 1;
                        warn!(
                            path = %path.display(),
                            offset = at,
                            bytes = skipped,
                            "spool: skipping bytes that are not a whole record (a write cut short by a crash, or corruption)"
                        );
                    }
                    Item::End => break,
                }
            }
            if seg.unacked == 0 {
                remove(&path);
                remove(&segment::ack_path(&dir, id));
                continue;
            }
            batches += u64::from(seg.unacked);
            entries += seg.unacked_entries;
            self.disk_bytes += seg.bytes + ack_bytes.len() as u64;
            self.segments.insert(id, seg);
            self.replay.queue.push_back(id);
        }
        for id in acks {
            if !self.segments.contains_key(&id) {
                remove(&segment::ack_path(&dir, id));
            }
        }
        self.replay.pos = HEADER_LEN;
        self.live.pos = HEADER_LEN;
        self.stats.torn_records.fetch_add(torn, Relaxed);
        if batches > 0 || torn > 0 {
            info!(
                batches,
                entries,
                bytes = self.disk_bytes,
                torn_records = torn,
                dir = %dir.display(),
                "spool: replaying what earlier runs left, oldest first"
            );
        }
        Ok(())
    }

    /// Frames `batch` for the next flush. `Err` gives the batch back when
    /// the spool has no room for it, or cannot start a segment (counted by
    /// the caller).
    pub fn append(&mut self, batch: Vec<Entry>) -> Result<(), (Vec<Entry>, DropReason)> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        let encoded = codec::encode(&batch, &mut payload);
        let size = (segment::RECORD_HEADER_LEN + payload.len()) as u64;
        let result = match encoded {
            Err(_) => Err(DropReason::Unencodable),
            Ok(()) => self.place(size).map(|()| {
                let w = self.writer.as_ref().expect("placed in a segment");
                let start = w.len + self.frame.len() as u64;
                let index = self.segments[&w.id].records + self.pending.len() as u32;
                let meta = RecordMeta {
                    index,
                    entries: batch.len() as u32,
                    time_ms: codec::nanos_since_epoch(batch[0].time) / 1_000_000,
                };
                segment::push_record(&mut self.frame, meta, &payload);
                Pending {
                    held: Held {
                        segment: w.id,
                        index,
                        entries: meta.entries,
                    },
                    time_ms: meta.time_ms,
                    start,
                    end: start + size,
                }
            }),
        };
        self.scratch = payload;
        match result {
            Ok(p) => {
                self.pending.push((p, batch));
                Ok(())
            }
            Err(reason) => Err((batch, reason)),
        }
    }

    /// Makes sure a record of `size` bytes can be framed into the current
    /// segment: room in the spool, and a segment with room (flushing and
    /// sealing the current one if it has none).
    fn place(&mut self, size: u64) -> Result<(), DropReason> {
        let framed = self.frame.len() as u64;
        if self.disk_bytes + framed + size > self.cfg.max_bytes && !self.make_room(framed + size) {
            return Err(DropReason::Full);
        }
        let failing = self.stats.failing.load(Relaxed);
        let rotate = self.writer.as_ref().is_some_and(|w| {
            let end = w.len + framed;
            let full = end > HEADER_LEN && end + size > self.cfg.segment_bytes;
            // Everything in it delivered: start afresh and free its space
            // (at once when the disk refused a write).
            let idle = framed == 0
                && self.segments[&w.id].records > 0
                && self.segments[&w.id].unacked == 0
                && (failing || w.len >= IDLE_ROTATE_BYTES.min(self.cfg.segment_bytes));
            full || idle
        });
        if rotate {
            self.flush();
            self.seal_writer();
        }
        if self.writer.is_none()
            && let Err(e) = self.start_segment()
        {
            self.write_error("starting a new segment", &e);
            return Err(DropReason::WriteError);
        }
        Ok(())
    }

    /// Frees room for `need` more bytes (with `drop-oldest`, by deleting
    /// the oldest segments that are not being written). True if it fits.
    fn make_room(&mut self, need: u64) -> bool {
        if self.cfg.full == FullPolicy::DropNewest {
            return false;
        }
        while self.disk_bytes + need > self.cfg.max_bytes {
            let writing = self.writer.as_ref().map(|w| w.id);
            let Some(&oldest) = self.segments.keys().find(|id| Some(**id) != writing) else {
                return false;
            };
            let seg = &self.segments[&oldest];
            let (batches, entries) = (u64::from(seg.unacked), seg.unacked_entries);
            self.delete_segment(oldest);
            // Batches already handed to the sink may still be delivered;
            // their acknowledgements find no segment and are ignored.
            self.outstanding.retain(|h, _| h.segment != oldest);
            self.cache.retain(|c| c.held.segment != oldest);
            self.cache_bytes = self.cache.iter().map(|c| (c.end - c.start) as usize).sum();
            self.stats
                .count_dropped(DropReason::Oldest, batches, entries);
        }
        true
    }

    /// Creates the next segment and makes it the writer's.
    fn start_segment(&mut self) -> io::Result<()> {
        let id = self.next_id;
        let path = segment::segment_path(&self.cfg.dir, id);
        let created = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&segment::header(id))?;
            if self.cfg.fsync != FsyncPolicy::Never {
                // The new name must survive a power loss with the records.
                self.dir_file.sync_all()?;
            }
            Ok(file)
        })();
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                remove(&path);
                return Err(e);
            }
        };
        self.next_id += 1;
        self.disk_bytes += HEADER_LEN;
        self.segments.insert(
            id,
            Segment {
                bytes: HEADER_LEN,
                records: 0,
                acked: Bits::default(),
                unacked: 0,
                unacked_entries: 0,
                sealed: false,
                ack_file: None,
                ack_buf: Vec::new(),
            },
        );
        self.live.queue.push_back(id);
        self.writer = Some(Writer {
            id,
            file,
            len: HEADER_LEN,
        });
        Ok(())
    }

    /// No more records go to the writer's segment.
    fn seal_writer(&mut self) {
        let Some(w) = self.writer.take() else { return };
        if self.cfg.fsync != FsyncPolicy::Never && self.unsynced_since.is_some() {
            self.unsynced.push((w.id, w.file));
        }
        let seg = self.segments.get_mut(&w.id).expect("the writer's segment");
        seg.sealed = true;
        if seg.unacked == 0 {
            self.delete_segment(w.id);
        }
    }

    /// Writes what [`Store::append`] framed, in one write, and syncs if the
    /// policy says so. Returns what became readable; a failed write drops
    /// (and counts) every framed batch and leaves the segment as it was.
    pub fn flush(&mut self) -> Flushed {
        if self.pending.is_empty() {
            return Flushed::default();
        }
        let w = self
            .writer
            .as_mut()
            .expect("pending records have a segment");
        let written = w.file.write_all(&self.frame);
        let pending = std::mem::take(&mut self.pending);
        self.frame.clear();
        if let Err(e) = written {
            self.stats.failing.store(true, Relaxed);
            // Cut back whatever part got written: the segment keeps ending
            // with a whole record (shrinking needs no free space).
            let _ = w.file.set_len(w.len);
            let (b, n) = (
                pending.len() as u64,
                pending.iter().map(|(p, _)| u64::from(p.held.entries)).sum(),
            );
            self.write_error("writing", &e);
            self.stats.count_dropped(DropReason::WriteError, b, n);
            return Flushed::default();
        }
        self.stats.failing.store(false, Relaxed);
        let id = w.id;
        let new_len = pending.last().expect("not empty").0.end;
        let grew = new_len - w.len;
        w.len = new_len;
        self.disk_bytes += grew;
        self.unsynced_since.get_or_insert_with(Instant::now);
        let seg = self.segments.get_mut(&id).expect("the writer's segment");
        seg.bytes = new_len;
        let mut out = Flushed::default();
        for (p, batch) in pending {
            seg.records += 1;
            seg.unacked += 1;
            seg.unacked_entries += u64::from(p.held.entries);
            out.batches += 1;
            out.entries += u64::from(p.held.entries);
            self.cache_bytes += (p.end - p.start) as usize;
            self.cache.push_back(Cached {
                held: p.held,
                start: p.start,
                end: p.end,
                time_ms: p.time_ms,
                batch,
            });
        }
        while self.cache_bytes > CACHE_BYTES
            && let Some(c) = self.cache.pop_front()
        {
            self.cache_bytes -= (c.end - c.start) as usize;
        }
        self.stats.written_batches.fetch_add(out.batches, Relaxed);
        self.stats.written_entries.fetch_add(out.entries, Relaxed);
        if self.cfg.fsync == FsyncPolicy::Always {
            self.sync();
        }
        out
    }

    /// `fdatasync`s what was written since the last sync (the `interval`
    /// policy calls this on its timer; `always` after every flush).
    pub fn sync(&mut self) {
        if self.unsynced_since.take().is_none() {
            return;
        }
        let mut result = Ok(());
        for (_, f) in self.unsynced.drain(..) {
            result = result.and(f.sync_data());
        }
        if let Some(w) = &self.writer {
            result = result.and(w.file.sync_data());
        }
        self.last_sync = Instant::now();
        self.stats.syncs.fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.write_error("syncing", &e);
        }
    }

    /// With the `interval` policy, once the interval has passed: the files
    /// to `fdatasync` (duplicated descriptors), for the caller to sync off
    /// the delivery thread. What they hold counts as synced from here; a
    /// failed sync is counted by [`sync_files`].
    pub fn due_sync(&mut self, now: Instant) -> Option<Vec<File>> {
        let FsyncPolicy::Interval(every) = self.cfg.fsync else {
            return None;
        };
        if self.unsynced_since.is_none() || now.saturating_duration_since(self.last_sync) < every {
            return None;
        }
        self.unsynced_since = None;
        self.last_sync = now;
        let mut files: Vec<File> = self.unsynced.drain(..).map(|(_, f)| f).collect();
        if let Some(w) = &self.writer {
            match w.file.try_clone() {
                Ok(f) => files.push(f),
                Err(e) => self.write_error("syncing", &e),
            }
        }
        Some(files)
    }

    fn write_error(&self, what: &str, e: &io::Error) {
        let before = self.stats.write_errors.fetch_add(1, Relaxed);
        if doubled(before, before + 1) {
            warn!(
                error = %e,
                dir = %self.cfg.dir.display(),
                total = before + 1,
                "spool: {what} failed; batches that could not be written are dropped and counted until it works again (is the disk full?)"
            );
        }
    }

    /// True if a record is waiting to be handed to the sink.
    pub fn has_next(&self) -> bool {
        let waiting = |c: &Cursor| {
            c.current()
                .is_some_and(|id| match (&self.writer, self.segments.get(&id)) {
                    (Some(w), _) if w.id == id => c.pos < w.len,
                    (_, Some(seg)) => c.pos < seg.bytes,
                    _ => false,
                })
        };
        waiting(&self.replay) || waiting(&self.live)
    }

    /// The next batch for the sink, alternating between the replay and the
    /// live range when both have one.
    pub fn next_batch(&mut self) -> Option<(Held, Vec<Entry>)> {
        let order = if self.replay_first {
            [true, false]
        } else {
            [false, true]
        };
        for replay in order {
            if let Some(got) = self.next_from(replay) {
                self.replay_first = !replay;
                return Some(got);
            }
        }
        None
    }

    fn next_from(&mut self, replay: bool) -> Option<(Held, Vec<Entry>)> {
        loop {
            let cursor = if replay {
                &mut self.replay
            } else {
                &mut self.live
            };
            let id = cursor.current()?;
            let Some(seg) = self.segments.get(&id) else {
                // Deleted (drop-oldest).
                cursor.advance();
                continue;
            };
            let writing = self.writer.as_ref().filter(|w| w.id == id).map(|w| w.len);
            let end = writing.unwrap_or(seg.bytes);
            if cursor.pos >= end || seg.unacked == 0 {
                if writing.is_some() {
                    // Caught up with the writer.
                    return None;
                }
                cursor.advance();
                continue;
            }
            // The live reader takes a cached batch without reading it.
            if !replay {
                while self
                    .cache
                    .front()
                    .is_some_and(|c| (c.held.segment, c.start) < (id, cursor.pos))
                {
                    let c = self.cache.pop_front().expect("front");
                    self.cache_bytes -= (c.end - c.start) as usize;
                }
                if let Some(c) = self.cache.front()
                    && (c.held.segment, c.start) == (id, cursor.pos)
                {
                    let c = self.cache.pop_front().expect("front");
                    self.cache_bytes -= (c.end - c.start) as usize;
                    cursor.pos = c.end;
                    self.outstanding.insert(c.held, c.time_ms);
                    return Some((c.held, c.batch));
                }
            }
            match self.read_record(replay, id, end) {
                Ok(Some((held, time_ms, batch))) => {
                    self.outstanding.insert(held, time_ms);
                    self.stats.read_batches.fetch_add(1, Relaxed);
                    return Some((held, batch));
                }
                // A record that was acknowledged, or did not decode: on.
                Ok(None) => continue,
                Err(e) => {
                    self.write_error("reading a segment", &e);
                    let cursor = if replay {
                        &mut self.replay
                    } else {
                        &mut self.live
                    };
                    cursor.advance();
                }
            }
        }
    }

    /// Reads the record at the cursor. `Ok(None)` when it is one to skip
    /// (acknowledged before, damaged, or undecodable); the cursor moves on
    /// either way.
    fn read_record(
        &mut self,
        replay: bool,
        id: u64,
        end: u64,
    ) -> io::Result<Option<(Held, u64, Vec<Entry>)>> {
        let dir = self.cfg.dir.clone();
        let cursor = if replay {
            &mut self.replay
        } else {
            &mut self.live
        };
        if cursor.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
            let path = segment::segment_path(&dir, id);
            let reader = segment::Reader::open(&path, id)?
                .ok_or_else(|| io::Error::other("the segment's header is damaged"))?;
            cursor.reader = Some((id, reader));
        }
        let (_, reader) = cursor.reader.as_mut().expect("opened above");
        reader.set_end(end);
        reader.seek(cursor.pos);
        let item = reader.read_next()?;
        cursor.pos = reader.pos();
        let Item::Record { meta, payload, .. } = item else {
            // Damage is counted when a segment is loaded; this run's own
            // segments have none.
            return Ok(None);
        };
        let seg = self.segments.get(&id).expect("checked by the caller");
        if seg.acked.get(meta.index) {
            return Ok(None);
        }
        let held = Held {
            segment: id,
            index: meta.index,
            entries: meta.entries,
        };
        match codec::decode(&payload) {
            Ok(batch) => Ok(Some((held, meta.time_ms, batch))),
            Err(e) => {
                // A whole record that does not decode was written by a
                // different build: it cannot be sent, and nothing can fix
                // it. Counted, and done with.
                warn!(segment = id, index = meta.index, error = %e, "spool: a record does not decode; dropping it");
                self.stats
                    .count_dropped(DropReason::Unencodable, 1, u64::from(meta.entries));
                self.ack(held);
                Ok(None)
            }
        }
    }

    /// The sink let go of a batch unfinished: it stays spooled, for the
    /// next run.
    pub fn release(&mut self, held: Held) {
        self.outstanding.remove(&held);
    }

    /// Batches handed to the sink and not yet settled.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The sink is done with a batch. Its index goes to the segment's ack
    /// file at the next [`Store::flush_acks`].
    pub fn ack(&mut self, held: Held) {
        self.outstanding.remove(&held);
        let Some(seg) = self.segments.get_mut(&held.segment) else {
            // Its segment was deleted to make room (drop-oldest).
            return;
        };
        if !seg.acked.set(held.index) {
            return;
        }
        seg.unacked -= 1;
        seg.unacked_entries -= u64::from(held.entries);
        self.stats.acked_batches.fetch_add(1, Relaxed);
        if seg.sealed && seg.unacked == 0 {
            self.delete_segment(held.segment);
        } else {
            seg.ack_buf
                .extend_from_slice(&segment::ack_entry(held.index));
        }
    }

    /// Appends the acknowledgements gathered since the last call to the
    /// ack files. Never synced: losing some costs duplicates, not events.
    pub fn flush_acks(&mut self) {
        let dir = self.cfg.dir.clone();
        let mut failed = None;
        for (&id, seg) in &mut self.segments {
            if seg.ack_buf.is_empty() {
                continue;
            }
            let written = (|| {
                if seg.ack_file.is_none() {
                    seg.ack_file = Some(
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .mode(0o600)
                            .open(segment::ack_path(&dir, id))?,
                    );
                }
                seg.ack_file
                    .as_mut()
                    .expect("opened")
                    .write_all(&seg.ack_buf)
            })();
            match written {
                Ok(()) => self.disk_bytes += seg.ack_buf.len() as u64,
                Err(e) => failed = Some(e),
            }
            seg.ack_buf.clear();
        }
        if let Some(e) = failed {
            self.stats.ack_write_errors.fetch_add(1, Relaxed);
            self.write_error("writing acknowledgements", &e);
        }
    }

    fn delete_segment(&mut self, id: u64) {
        let Some(seg) = self.segments.remove(&id) else {
            return;
        };
        let ack = segment::ack_path(&self.cfg.dir, id);
        let ack_bytes = fs::metadata(&ack).map_or(0, |m| m.len());
        remove(&segment::segment_path(&self.cfg.dir, id));
        remove(&ack);
        self.unsynced.retain(|(s, _)| *s != id);
        self.disk_bytes = self.disk_bytes.saturating_sub(seg.bytes + ack_bytes);
        if self.writer.as_ref().is_some_and(|w| w.id == id) {
            self.writer = None;
        }
        for cursor in [&mut self.replay, &mut self.live] {
            if cursor.current() == Some(id) {
                cursor.advance();
            } else {
                cursor.queue.retain(|s| *s != id);
            }
        }
    }

    /// Refreshes the spool's gauges.
    pub fn update_gauges(&self) {
        let s = &self.stats;
        let (mut batches, mut entries) = (0u64, 0u64);
        for seg in self.segments.values() {
            batches += u64::from(seg.unacked);
            entries += seg.unacked_entries;
        }
        s.bytes.store(self.disk_bytes, Relaxed);
        s.segments.store(self.segments.len() as u64, Relaxed);
        s.batches.store(batches, Relaxed);
        s.entries.store(entries, Relaxed);
        s.backlog_bytes.store(self.backlog_bytes(), Relaxed);
        s.oldest_ms.store(self.oldest_ms().unwrap_or(0), Relaxed);
        // Full: not even a segment's worth of room left.
        s.full.store(
            self.disk_bytes + self.cfg.segment_bytes > self.cfg.max_bytes,
            Relaxed,
        );
    }

    /// Bytes not yet handed to the sink.
    fn backlog_bytes(&self) -> u64 {
        let mut total = 0;
        for cursor in [&self.replay, &self.live] {
            for (i, id) in cursor.queue.iter().enumerate() {
                let Some(seg) = self.segments.get(id) else {
                    continue;
                };
                let end = self
                    .writer
                    .as_ref()
                    .filter(|w| w.id == *id)
                    .map_or(seg.bytes, |w| w.len);
                total += end.saturating_sub(if i == 0 { cursor.pos } else { HEADER_LEN });
            }
        }
        total
    }

    /// Capture time (ms since the epoch) of the oldest batch not yet
    /// acknowledged: handed out, or next in line for either reader.
    fn oldest_ms(&self) -> Option<u64> {
        let handed = self.outstanding.values().copied().min();
        let next = |c: &Cursor| -> Option<u64> {
            let id = c.current()?;
            if let Some(cached) = self
                .cache
                .iter()
                .find(|x| (x.held.segment, x.start) == (id, c.pos))
            {
                return Some(cached.time_ms);
            }
            let path = segment::segment_path(&self.cfg.dir, id);
            peek_time(&path, c.pos)
        };
        [handed, next(&self.replay), next(&self.live)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Syncs (unless the policy is `never`) and flushes acknowledgements,
    /// for a clean stop.
    pub fn close(&mut self) {
        self.flush();
        self.flush_acks();
        if self.cfg.fsync != FsyncPolicy::Never {
            self.sync();
        }
        // A clean stop with everything delivered leaves an empty directory.
        if let Some(w) = &self.writer
            && self.segments[&w.id].unacked == 0
        {
            self.seal_writer();
        }
        self.update_gauges();
    }
}

/// `fdatasync`s `files` (from [`Store::due_sync`]), counting the sync and
/// any failure.
pub fn sync_files(files: Vec<File>, stats: &SpoolStats) {
    let mut failed = None;
    for f in files {
        if let Err(e) = f.sync_data() {
            failed = Some(e);
        }
    }
    stats.syncs.fetch_add(1, Relaxed);
    if let Some(e) = failed {
        let before = stats.write_errors.fetch_add(1, Relaxed);
        if doubled(before, before + 1) {
            warn!(error = %e, "spool: fdatasync failed; spooled batches may not survive a power loss");
        }
    }
}

/// The capture time in the header of the record at `pos`, if one is there.
fn peek_time(path: &Path, pos: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).ok()?;
    let mut head = [0u8; segment::RECORD_HEADER_LEN];
    file.read_exact_at(&mut head, pos).ok()?;
    (head[..4] == *b"UDPR").then(|| u64::from_le_bytes(head[24..32].try_into().expect("8 bytes")))
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    codec::nanos_since_epoch(SystemTime::now()) / 1_000_000
}

/// How long ago `ms` (since the epoch) was.
pub fn age(ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(ms))
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "spool: could not remove a file");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::encode::Detail;

    fn entry(tag: u64, k: usize) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: Detail::from_json(&format!(
                "{{\"tag\":{tag},\"k\":{k},\"pad\":\"{}\"}}",
                "x".repeat((tag % 97) as usize)
            )),
            time: SystemTime::now(),
            capture_ns: 1,
        }
    }

    /// A batch whose entries say which batch they are.
    fn batch(tag: u64) -> Vec<Entry> {
        (0..1 + (tag % 10) as usize)
            .map(|k| entry(tag, k))
            .collect()
    }

    fn tag_of(b: &[Entry]) -> u64 {
        let v: serde_json::Value = serde_json::from_str(&b[0].detail.json()).unwrap();
        v["tag"].as_u64().unwrap()
    }

    fn config(dir: &Path) -> Config {
        Config {
            dir: dir.to_owned(),
            max_bytes: 64 << 20,
            full: FullPolicy::DropNewest,
            fsync: FsyncPolicy::Never,
            segment_bytes: 4096,
        }
    }

    fn open(cfg: &Config) -> (Store, Arc<SpoolStats>) {
        let stats = Arc::new(SpoolStats::default());
        (Store::open(cfg.clone(), stats.clone()).unwrap(), stats)
    }

    fn files(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lock")
            .collect()
    }

    fn drain(store: &mut Store) -> Vec<(Held, Vec<Entry>)> {
        std::iter::from_fn(|| store.next_batch()).collect()
    }

    #[test]
    fn batches_come_back_in_order_and_acked_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, stats) = open(&config(dir.path()));
        for tag in 0..200 {
            store.append(batch(tag)).unwrap();
            if tag % 7 == 6 {
                store.flush();
            }
        }
        store.flush();
        assert!(
            files(dir.path()).len() > 5,
            "rotation: {:?}",
            files(dir.path())
        );
        let got = drain(&mut store);
        assert_eq!(
            got.iter().map(|(_, b)| tag_of(b)).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>()
        );
        for (held, b) in &got {
            assert_eq!(b.len() as u32, held.entries);
            let details = |b: &[Entry]| b.iter().map(|e| e.detail.clone()).collect::<Vec<_>>();
            assert_eq!(details(b), details(&batch(tag_of(b))));
        }
        for (held, _) in got {
            store.ack(held);
        }
        store.flush_acks();
        // Only the segment being written is left.
        assert_eq!(
            files(dir.path())
                .iter()
                .filter(|n| n.ends_with(".seg"))
                .count(),
            1
        );
        store.update_gauges();
        assert_eq!(stats.batches.load(Relaxed), 0);
        assert_eq!(stats.written_batches.load(Relaxed), 200);
        assert_eq!(stats.acked_batches.load(Relaxed), 200);
        // All from memory: nothing was read back.
        assert_eq!(stats.read_batches.load(Relaxed), 0);
    }

    #[test]
    fn a_restart_replays_only_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let (mut store, _) = open(&cfg);
            for tag in 0..100 {
                store.append(batch(tag)).unwrap();
            }
            store.flush();
            for (held, b) in drain(&mut store) {
                if !tag_of(&b).is_multiple_of(3) {
                    store.ack(held);
                }
            }
            store.flush_acks();
            // No close: as after SIGKILL.
        }
        let (mut store, stats) = open(&cfg);
        store.update_gauges();
        assert_eq!(stats.batches.load(Relaxed), 34);
        let tags: Vec<u64> = drain(&mut store).iter().map(|(_, b)| tag_of(b)).collect();
        assert_eq!(
            tags,
            (0..100u64)
                .filter(|t| t.is_multiple_of(3))
                .collect::<Vec<_>>()
        );
        assert_eq!(stats.read_batches.load(Relaxed), 34);
        assert_eq!(stats.torn_records.load(Relaxed), 0);
    }

    #[test]
    fn the_replay_and_new_traffic_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let (mut store, _) = open(&cfg);
            for tag in 0..5 {
                store.append(batch(tag)).unwrap();
            }
            store.flush();
        }
        let (mut store, _) = open(&cfg);
        for tag in 100..105 {
            store.append(batch(tag)).unwrap();
        }
        store.flush();
        let tags: Vec<u64> = drain(&mut store).iter().map(|(_, b)| tag_of(b)).collect();
        assert_eq!(tags, [0, 100, 1, 101, 2, 102, 3, 103, 4, 104]);
    }

    #[test]
    fn drop_newest_refuses_what_does_not_fit_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            max_bytes: 16 * 1024,
            ..config(dir.path())
        };
        let (mut store, stats) = open(&cfg);
        let mut refused = Vec::new();
        for tag in 0..100 {
            if let Err((b, reason)) = store.append(batch(tag)) {
                assert_eq!(reason, DropReason::Full);
                refused.push(tag_of(&b));
            }
            store.flush();
        }
        assert!(!refused.is_empty());
        store.update_gauges();
        assert!(
            stats.bytes.load(Relaxed) <= 16 * 1024,
            "{}",
            stats.bytes.load(Relaxed)
        );
        assert!(stats.full.load(Relaxed));
        let tags: Vec<u64> = drain(&mut store).iter().map(|(_, b)| tag_of(b)).collect();
        // Everything not refused is kept, in order; the first refusal
        // ends the run of whole batches (later, smaller ones may fit).
        let kept: Vec<u64> = (0..100).filter(|t| !refused.contains(t)).collect();
        assert_eq!(tags, kept);
        assert_eq!(
            tags[..refused[0] as usize],
            (0..refused[0]).collect::<Vec<_>>()
        );
    }

    #[test]
    fn drop_oldest_deletes_whole_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            max_bytes: 16 * 1024,
            full: FullPolicy::DropOldest,
            ..config(dir.path())
        };
        let (mut store, stats) = open(&cfg);
        let mut entries = 0;
        for tag in 0..300 {
            let b = batch(tag);
            entries += b.len() as u64;
            store.append(b).unwrap();
            store.flush();
        }
        store.update_gauges();
        assert!(stats.bytes.load(Relaxed) <= 16 * 1024);
        let tags: Vec<u64> = drain(&mut store).iter().map(|(_, b)| tag_of(b)).collect();
        // The newest are kept, in order, and the last one is there.
        assert_eq!(*tags.last().unwrap(), 299);
        assert!(tags.windows(2).all(|w| w[1] == w[0] + 1), "{tags:?}");
        let kept: u64 = tags.iter().map(|t| batch(*t).len() as u64).sum();
        assert_eq!(stats.dropped_entries(DropReason::Oldest) + kept, entries);
    }

    /// Random sequences of writes, reads, acknowledgements and crashes —
    /// some tearing the last write — against a model of what must come
    /// back: every batch written and not acknowledged comes back, in order,
    /// after any crash; an acknowledged one may come back only if its
    /// acknowledgement had not reached the ack file (nor its segment been
    /// deleted); a torn record never comes back and is counted.
    #[test]
    fn model_of_writes_reads_acks_and_crashes() {
        for seed in 0..40 {
            run_model(seed);
        }
    }

    fn run_model(seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            segment_bytes: rng.u64(2048..8192),
            ..config(dir.path())
        };
        // tag → acknowledged (and whether the ack was flushed).
        let mut written: BTreeMap<u64, Option<bool>> = BTreeMap::new();
        let mut handed: Vec<Held> = Vec::new();
        let mut held_tag: HashMap<Held, u64> = HashMap::new();
        let mut next_tag = 0u64;
        let (mut store, _) = open(&cfg);
        for _ in 0..300 {
            match rng.u32(0..100) {
                0..35 => {
                    for _ in 0..rng.usize(1..5) {
                        store.append(batch(next_tag)).unwrap();
                        written.insert(next_tag, None);
                        next_tag += 1;
                    }
                    store.flush();
                }
                35..60 => {
                    if let Some((held, b)) = store.next_batch() {
                        let tag = tag_of(&b);
                        assert_eq!(
                            written.get(&tag),
                            Some(&None),
                            "seed {seed}: handed out tag {tag} twice or unwritten"
                        );
                        held_tag.insert(held, tag);
                        handed.push(held);
                    }
                }
                60..85 if !handed.is_empty() => {
                    let held = handed.swap_remove(rng.usize(..handed.len()));
                    store.ack(held);
                    written.insert(held_tag[&held], Some(false));
                    if rng.bool() {
                        store.flush_acks();
                        for v in written.values_mut() {
                            if *v == Some(false) {
                                *v = Some(true);
                            }
                        }
                    }
                }
                85..95 => {
                    // Crash, maybe mid-write: a last batch whose record is
                    // cut short on disk never counted as written.
                    let tear = rng.bool() && store.writer.is_some();
                    if tear {
                        store.append(batch(next_tag)).unwrap();
                        let frame = std::mem::take(&mut store.frame);
                        let cut = rng.usize(1..frame.len());
                        let w = store.writer.as_mut().unwrap();
                        w.file.write_all(&frame[..cut]).unwrap();
                        next_tag += 1;
                    }
                    drop(store);
                    let stats;
                    (store, stats) = open(&cfg);
                    if tear {
                        assert!(stats.torn_records.load(Relaxed) >= 1, "seed {seed}");
                    }
                    handed.clear();
                    held_tag.clear();
                    let back: Vec<u64> = drain(&mut store)
                        .iter()
                        .map(|(h, b)| {
                            let tag = tag_of(b);
                            held_tag.insert(*h, tag);
                            handed.push(*h);
                            tag
                        })
                        .collect();
                    // Oldest first, each once.
                    assert!(
                        back.windows(2).all(|w| w[0] < w[1]),
                        "seed {seed}: {back:?}"
                    );
                    for (tag, acked) in written.iter_mut() {
                        let came_back = back.binary_search(tag).is_ok();
                        match *acked {
                            // Written, never acknowledged: must come back.
                            None => assert!(came_back, "seed {seed}: tag {tag} lost"),
                            // Acknowledged for good: must not.
                            Some(true) => assert!(!came_back, "seed {seed}: tag {tag} came back"),
                            // Acknowledged in memory only: either.
                            Some(false) => {}
                        }
                        *acked = if came_back { None } else { Some(true) };
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod full_disk {
    use super::*;
    use crate::encode::Detail;

    fn batch(tag: u64) -> Vec<Entry> {
        (0..10)
            .map(|k| Entry {
                source: Arc::from("udp.raw"),
                detail_type: Arc::from("UdpPacket"),
                event_bus_name: Arc::from("default"),
                detail: Detail::from_json(&format!(
                    "{{\"tag\":{tag},\"k\":{k},\"pad\":\"{}\"}}",
                    "y".repeat(200)
                )),
                time: SystemTime::now(),
                capture_ns: 1,
            })
            .collect()
    }

    /// A disk that fills up: writes fail and are counted, the segment keeps
    /// only whole records, and once what it holds is acknowledged its space
    /// comes back and writing goes on.
    #[test]
    fn writing_resumes_once_delivered_batches_free_the_disk() {
        for fsync in [
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(1)),
            FsyncPolicy::Always,
        ] {
            if !test_support::is_root() {
                println!("SKIPPED: needs root to mount a tmpfs");
                return;
            }
            let fs = test_support::Tmpfs::mount("256k");
            let cfg = Config {
                dir: fs.path().join("spool"),
                max_bytes: 1 << 30,
                full: FullPolicy::DropNewest,
                fsync,
                segment_bytes: Config::segment_bytes_for(1 << 30),
            };
            let stats = Arc::new(SpoolStats::default());
            let mut store = Store::open(cfg.clone(), stats.clone()).unwrap();
            let mut tag = 0;
            while !stats.failing.load(Relaxed) {
                store.append(batch(tag)).unwrap();
                store.flush();
                tag += 1;
                assert!(tag < 10_000);
            }
            let written = stats.written_batches.load(Relaxed);
            assert!(written > 0);
            // Everything written is delivered and acknowledged.
            let mut n = 0;
            while let Some((held, _)) = store.next_batch() {
                store.ack(held);
                n += 1;
            }
            store.flush_acks();
            assert_eq!(n, written, "{fsync:?}");
            // The next batches are written again, at once: no sync has run
            // since the last write, and the delivered segment's space is
            // free anyway.
            for _ in 0..5 {
                store.append(batch(tag)).unwrap();
                store.flush();
                tag += 1;
            }
            assert!(!stats.failing.load(Relaxed), "{fsync:?}: still failing");
            let back: Vec<u64> = std::iter::from_fn(|| store.next_batch())
                .map(|(h, _)| u64::from(h.entries))
                .collect();
            assert_eq!(back.len(), 5, "{fsync:?}");
            drop(store);
            // Nothing damaged.
            let stats = Arc::new(SpoolStats::default());
            let _ = Store::open(cfg, stats.clone()).unwrap();
            assert_eq!(stats.torn_records.load(Relaxed), 0, "{fsync:?}");
        }
    }
}
