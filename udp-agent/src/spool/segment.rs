//! Segment files: the spool's on-disk format, and a reader that finds
//! every whole record in one, whatever a crash left behind.
//!
//! A segment is `<id>.seg` (the id in 20 digits, so names sort by id):
//!
//! ```text
//! header, 32 bytes:
//!    0  [u8; 8] "UDPSPOOL"
//!    8  u32     format version (1)
//!   12  u32     reserved, zero
//!   16  u64     segment id (the same as in the name)
//!   24  u32     CRC-32 of bytes 0..24
//!   28  u32     reserved, zero
//! then records, back to back, each:
//!    0  u32     "UDPR" (0x52504455): where a record starts
//!    4  u32     payload length
//!    8  u32     CRC-32 of bytes 12..32 and the payload
//!   12  u32     record index in the segment (0, 1, 2, …)
//!   16  u32     entries in the batch
//!   20  u32     reserved, zero
//!   24  u64     capture time of the batch's first entry, ms since the epoch
//!   32  …       payload: the batch (`codec`)
//! ```
//!
//! Little-endian. Records are only ever appended. A crash can leave the
//! last one torn (a prefix of it), and a disk can flip bits anywhere; the
//! checksum tells either from a whole record. [`Reader`] then counts the
//! damage and looks for the next record start, so a torn or corrupt
//! record is skipped — never returned, never in the way of the records
//! after it.
//!
//! Beside a segment, `<id>.ack` lists the records the sink has finished:
//! 8 bytes each, the record index and its bitwise complement (u32 each), so
//! a torn or garbled entry is recognised and ignored (its record is then
//! sent again: a duplicate, never a loss).

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Bytes before the first record.
pub const HEADER_LEN: u64 = 32;
/// Bytes of a record before its payload.
pub const RECORD_HEADER_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"UDPSPOOL";
const VERSION: u32 = 1;
const RECORD_MAGIC: [u8; 4] = *b"UDPR";
/// Largest payload a reader believes: far above any batch (a PutEvents
/// request is at most 1 MB), so a garbled length is not taken for one.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Bytes read from the file at a time.
const READ_CHUNK: usize = 256 * 1024;

/// `<dir>/<id>.seg`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// `<dir>/<id>.ack`.
pub fn ack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.ack"))
}

/// The id in a segment's or an ack file's name, and whether it is a
/// segment.
pub fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (id, ext) = name.split_once('.')?;
    if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let segment = match ext {
        "seg" => true,
        "ack" => false,
        _ => return None,
    };
    Some((id.parse().ok()?, segment))
}

/// A segment file's header.
pub fn header(id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// True if `h` is the header of segment `id`.
fn header_ok(h: &[u8], id: u64) -> bool {
    h.len() >= HEADER_LEN as usize && h[..HEADER_LEN as usize] == header(id)
}

/// What a record says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub index: u32,
    pub entries: u32,
    pub time_ms: u64,
}

/// Appends a record to `out`.
pub fn push_record(out: &mut Vec<u8>, meta: RecordMeta, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, below
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.entries.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&meta.time_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 12..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// One ack-file entry.
pub fn ack_entry(index: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&index.to_le_bytes());
    e[4..].copy_from_slice(&(!index).to_le_bytes());
    e
}

/// The record indexes an ack file lists (garbled or torn entries left out).
pub fn read_acks(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(8).filter_map(|c| {
        let index = u32::from_le_bytes(c[..4].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(c[4..].try_into().expect("4 bytes"));
        (check == !index).then_some(index)
    })
}

/// What [`Reader::read_next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole record: its header, its payload, and the offset just past it.
    Record {
        meta: RecordMeta,
        payload: Vec<u8>,
        end: u64,
    },
    /// Bytes that are not a whole record (a torn tail, or corruption),
    /// skipped up to the next record start or the end.
    Damaged { at: u64, skipped: u64 },
    /// Nothing more up to the end of the file (or of what is written).
    End,
}

/// Reads the records of one segment in order, from a window of the file.
#[derive(Debug)]
pub struct Reader {
    file: File,
    /// File offset of `buf[0]`.
    buf_at: u64,
    buf: Vec<u8>,
    /// Where the next record is looked for.
    pos: u64,
    /// How far the file may be read: its length, or what the writer has
    /// written so far.
    end: u64,
}

impl Reader {
    /// Opens segment `id` at `path`; `None` if its header is not whole
    /// (a crash right after the file was created).
    pub fn open(path: &Path, id: u64) -> io::Result<Option<Reader>> {
        let file = File::open(path)?;
        let end = file.metadata()?.len();
        let mut h = [0u8; HEADER_LEN as usize];
        if end < HEADER_LEN || file.read_exact_at(&mut h, 0).is_err() || !header_ok(&h, id) {
            return Ok(None);
        }
        Ok(Some(Reader {
            file,
            buf_at: HEADER_LEN,
            buf: Vec::new(),
            pos: HEADER_LEN,
            end,
        }))
    }

    /// Where the next record is looked for.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Moves to `pos` (a record start known from elsewhere).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// Lets the reader go up to `end` (the writer has written that far).
    pub fn set_end(&mut self, end: u64) {
        self.end = end;
    }

    /// The bytes at `[at, at + n)` (fewer at the end), read into the window.
    fn window(&mut self, at: u64, n: usize) -> io::Result<&[u8]> {
        let want_end = (at + n as u64).min(self.end);
        let have_end = self.buf_at + self.buf.len() as u64;
        if at < self.buf_at || want_end > have_end {
            let len = (want_end - at).max(READ_CHUNK as u64).min(self.end - at) as usize;
            self.buf.resize(len, 0);
            let mut done = 0;
            while done < len {
                match self.file.read_at(&mut self.buf[done..], at + done as u64)? {
                    0 => break,
                    k => done += k,
                }
            }
            self.buf.truncate(done);
            self.buf_at = at;
        }
        let from = (at - self.buf_at) as usize;
        let to = ((want_end - self.buf_at) as usize).min(self.buf.len());
        Ok(&self.buf[from.min(to)..to])
    }

    /// The next whole record, or the damage in the way of it, or the end.
    pub fn read_next(&mut self) -> io::Result<Item> {
        let at = self.pos;
        if at >= self.end {
            return Ok(Item::End);
        }
        if let Some((meta, payload, end)) = self.record_at(at)? {
            self.pos = end;
            return Ok(Item::Record { meta, payload, end });
        }
        // Not a record here: skip to the next place that starts like one
        // and holds a whole record, or to the end.
        let mut from = at + 1;
        loop {
            let Some(start) = self.find_magic(from)? else {
                self.pos = self.end;
                return Ok(Item::Damaged {
                    at,
                    skipped: self.end - at,
                });
            };
            if self.record_at(start)?.is_some() {
                self.pos = start;
                return Ok(Item::Damaged {
                    at,
                    skipped: start - at,
                });
            }
            from = start + 1;
        }
    }

    /// The record at `at`, if a whole one starts there.
    fn record_at(&mut self, at: u64) -> io::Result<Option<(RecordMeta, Vec<u8>, u64)>> {
        let head = self.window(at, RECORD_HEADER_LEN)?;
        if head.len() < RECORD_HEADER_LEN || head[..4] != RECORD_MAGIC {
            return Ok(None);
        }
        let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let len = u32_at(4) as usize;
        let crc = u32_at(8);
        let meta = RecordMeta {
            index: u32_at(12),
            entries: u32_at(16),
            time_ms: u64::from_le_bytes(head[24..32].try_into().expect("8 bytes")),
        };
        let end = at + (RECORD_HEADER_LEN + len) as u64;
        if len > MAX_PAYLOAD || end > self.end {
            return Ok(None);
        }
        let whole = self.window(at, RECORD_HEADER_LEN + len)?;
        if whole.len() < RECORD_HEADER_LEN + len || crc32fast::hash(&whole[12..]) != crc {
            return Ok(None);
        }
        Ok(Some((meta, whole[RECORD_HEADER_LEN..].to_vec(), end)))
    }

    /// The offset of the next record magic at or after `from`.
    fn find_magic(&mut self, mut from: u64) -> io::Result<Option<u64>> {
        while from + 4 <= self.end {
            let w = self.window(from, READ_CHUNK)?;
            if w.len() < 4 {
                return Ok(None);
            }
            if let Some(i) = w.windows(4).position(|x| x == RECORD_MAGIC) {
                return Ok(Some(from + i as u64));
            }
            // The last three bytes may begin a magic that straddles.
            from += (w.len() - 3) as u64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn meta(index: u32) -> RecordMeta {
        RecordMeta {
            index,
            entries: index + 1,
            time_ms: 1_795_822_397_250 + u64::from(index),
        }
    }

    /// A segment with `n` records whose payloads are `payload(i)`.
    fn segment(dir: &Path, id: u64, n: u32) -> (PathBuf, Vec<u64>) {
        let path = segment_path(dir, id);
        let mut bytes = header(id).to_vec();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(bytes.len() as u64);
            push_record(&mut bytes, meta(i), &payload(i));
        }
        std::fs::write(&path, &bytes).unwrap();
        (path, starts)
    }

    fn payload(i: u32) -> Vec<u8> {
        // Some payloads contain the record magic: a resync must not trip.
        let mut p = format!("payload {i} ")
            .repeat(1 + i as usize % 7)
            .into_bytes();
        if i.is_multiple_of(3) {
            p.extend_from_slice(b"UDPR");
        }
        p
    }

    fn read_all(path: &Path, id: u64) -> (Vec<u32>, Vec<(u64, u64)>) {
        let mut r = Reader::open(path, id).unwrap().unwrap();
        let (mut records, mut damaged) = (Vec::new(), Vec::new());
        loop {
            match r.read_next().unwrap() {
                Item::Record {
                    meta: m,
                    payload: p,
                    ..
                } => {
                    assert_eq!(m, meta(m.index));
                    assert_eq!(p, payload(m.index));
                    records.push(m.index);
                }
                Item::Damaged { at, skipped } => damaged.push((at, skipped)),
                Item::End => break,
            }
        }
        (records, damaged)
    }

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/spool");
        let seg = segment_path(dir, 42);
        assert_eq!(seg, Path::new("/spool/00000000000000000042.seg"));
        let name = seg.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some((42, true)));
        let ack = ack_path(dir, 42);
        assert_eq!(
            parse_name(ack.file_name().unwrap().to_str().unwrap()),
            Some((42, false))
        );
        for bad in [
            "lock",
            "42.seg",
            "0000000000000000004x.seg",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_record_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = segment(dir.path(), 7, 50);
        let (records, damaged) = read_all(&path, 7);
        assert_eq!(records, (0..50).collect::<Vec<_>>());
        assert!(damaged.is_empty());
    }

    #[test]
    fn the_header_must_name_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = segment(dir.path(), 7, 1);
        assert!(Reader::open(&path, 8).unwrap().is_none());
        std::fs::write(&path, &header(7)[..20]).unwrap();
        assert!(Reader::open(&path, 7).unwrap().is_none());
    }

    #[test]
    fn a_torn_tail_at_every_cut_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = segment(dir.path(), 1, 6);
        let whole = std::fs::read(&path).unwrap();
        let last = starts[5] as usize;
        for cut in last + 1..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (records, damaged) = read_all(&path, 1);
            assert_eq!(records, [0, 1, 2, 3, 4], "cut at {cut}");
            assert_eq!(
                damaged,
                [(last as u64, (cut - last) as u64)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corruption_in_the_middle_costs_only_the_records_it_hits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = segment(dir.path(), 1, 12);
        let whole = std::fs::read(&path).unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..300 {
            let mut bytes = whole.clone();
            let victim = rng.usize(1..11);
            let (from, to) = (starts[victim] as usize, starts[victim + 1] as usize);
            let i = rng.usize(from..to);
            bytes[i] ^= 1 << rng.u32(0..8);
            std::fs::write(&path, &bytes).unwrap();
            let (records, damaged) = read_all(&path, 1);
            let want: Vec<u32> = (0..12).filter(|r| *r as usize != victim).collect();
            assert_eq!(records, want, "byte {i} of record {victim}");
            assert_eq!(damaged, [(from as u64, (to - from) as u64)]);
        }
    }

    #[test]
    fn a_reader_stops_at_the_writers_end_and_goes_on_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 3);
        let mut f = File::create(&path).unwrap();
        f.write_all(&header(3)).unwrap();
        let mut r = Reader::open(&path, 3).unwrap().unwrap();
        assert_eq!(r.read_next().unwrap(), Item::End);
        let mut bytes = Vec::new();
        push_record(&mut bytes, meta(0), &payload(0));
        f.write_all(&bytes).unwrap();
        assert_eq!(r.read_next().unwrap(), Item::End);
        r.set_end(HEADER_LEN + bytes.len() as u64);
        assert!(matches!(r.read_next().unwrap(), Item::Record { meta: m, .. } if m.index == 0));
        assert_eq!(r.read_next().unwrap(), Item::End);
    }

    #[test]
    fn ack_entries_survive_only_whole() {
        let mut bytes: Vec<u8> = [3u32, 9, 0, u32::MAX]
            .iter()
            .flat_map(|i| ack_entry(*i))
            .collect();
        // A garbled entry and a torn one.
        bytes[9] ^= 0x40;
        bytes.extend_from_slice(&ack_entry(77)[..5]);
        assert_eq!(read_acks(&bytes).collect::<Vec<_>>(), [3, 0, u32::MAX]);
    }
}
