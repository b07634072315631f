//! The payload's part of a Detail, in its port's format, and the writer
//! every part of a Detail goes through.
//!
//! | format | key | when the payload does not fit |
//! |---|---|---|
//! | `base64` | `Payload`: standard base64 | (everything fits) |
//! | `text` | `Text`: the payload as a string, bytes exact | not UTF-8: `Payload` |
//! | `hex` | `Hex`: lowercase hex digits | (everything fits) |
//! | `json` | `Json`: the payload's JSON value, its text as sent | not JSON: `Payload` |
//! | `syslog` | `Syslog`: the parsed fields; beside it `Text` (or `Payload` when not UTF-8) | (everything parses) |
//!
//! `Format` names what the event holds: the port's format, or `base64`
//! for a payload that fell back to it.

use std::time::SystemTime;

use serde::de::IgnoredAny;
use udp_ebpf_common::Format;

use super::{
    Detail,
    escape::{
        copy_short, copy16, count_escapes, escapes16, is_ascii, load_short, push_escaped,
        push_escaped_twice,
    },
    json,
    syslog::{self, Stamp},
};
use crate::clock;

/// Bytes an escaped literal's escaping added: its `\"` pairs (the only
/// escapes the Detail's keys and punctuation need). Refuses, at compile
/// time, a literal with any other backslash.
pub(super) const fn escaped_quotes(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            assert!(i + 1 < b.len() && b[i + 1] == b'"', "only \\\" escapes");
            n += 1;
            i += 1;
        }
        i += 1;
    }
    n
}

/// Appends a literal written escaped as a Detail keeps it
/// (`r#",\"Length\":"#`), counting its escapes at compile time.
macro_rules! lit {
    ($w:expr, $s:expr) => {{
        const ADDED: usize = $crate::encode::format::escaped_quotes($s);
        $w.lit($s, ADDED)
    }};
}
pub(super) use lit;

/// A Detail being written: the text escaped as [`Detail`] keeps it, and
/// how many bytes the escaping added (the difference to the JSON text AWS
/// counts).
pub struct DetailWriter {
    pub(super) text: String,
    /// A `u32` (a Detail is at most a few hundred KB): two `usize`
    /// counters bumped together, this and the text's length, are merged
    /// by the compiler into one 16-byte load and store, and that load
    /// waits for the scalar store of the length just before it (a failed
    /// store-to-load forward at every literal, seen in perf).
    pub(super) added: u32,
}

impl DetailWriter {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            text: String::with_capacity(n),
            added: 0,
        }
    }

    /// Text written as it is in both forms (digits, addresses, base64).
    pub fn plain(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Appends the first `n` bytes of `buf`, which are UTF-8 whole: all
    /// sixteen are stored (a store of fixed size, not a call to `memcpy`
    /// for a few bytes), then the text is cut back.
    #[inline(always)]
    fn push16(&mut self, buf: &[u8; 16], n: usize) {
        let len = self.text.len();
        // SAFETY: the text is cut back to end with the `n` bytes of `buf`
        // (UTF-8 whole, the caller's word) before it is read again;
        // neither call below can unwind after changing the bytes.
        let v = unsafe { self.text.as_mut_vec() };
        v.extend_from_slice(buf);
        v.truncate(len + n);
    }

    /// Escaped text whose escaping added `added` bytes (use [`lit!`] for
    /// literals).
    pub fn lit(&mut self, escaped: &str, added: usize) {
        self.text.push_str(escaped);
        self.add(added);
    }

    fn add(&mut self, n: usize) {
        self.added += n as u32;
    }

    /// A JSON string value: `s` quoted and escaped, then escaped again.
    pub fn string(&mut self, s: &str) {
        // A `text` payload or another long string: straight to the
        // escaper (the short-field test is for syslog fields).
        self.escaped_span(s);
    }

    /// [`string`](Self::string), returning where the escaped text between
    /// the quotes lies in [`text`](Self::text) and what escaping it twice
    /// added (so an equal run of a later string can be copied from there).
    #[inline(always)]
    fn string_span(&mut self, s: &str) -> (std::ops::Range<usize>, usize) {
        // Most syslog fields are short and need no escaping: tested and
        // copied sixteen bytes at once, without a call to the escaper.
        let b = s.as_bytes();
        if b.len() <= 16 {
            let buf = load_short(b);
            if escapes16(&buf) == 0 {
                lit!(self, r#"\""#);
                let start = self.text.len();
                self.push16(&buf, b.len());
                let end = self.text.len();
                lit!(self, r#"\""#);
                return (start..end, 0);
            }
        } else if let (Some(head), Some(tail), true) =
            (b.first_chunk::<16>(), b.last_chunk::<16>(), b.len() <= 32)
            && escapes16(head) | escapes16(tail) == 0
        {
            // Seventeen to 32 bytes (a timestamp, a short message): two
            // overlapping chunks.
            lit!(self, r#"\""#);
            let start = self.text.len();
            self.push16(head, b.len() - 16);
            self.push16(tail, 16);
            let end = self.text.len();
            lit!(self, r#"\""#);
            return (start..end, 0);
        }
        self.string_span_escaped(s)
    }

    /// [`string_span`](Self::string_span) through the escaper.
    #[inline(never)]
    fn string_span_escaped(&mut self, s: &str) -> (std::ops::Range<usize>, usize) {
        self.escaped_span(s)
    }

    /// The body of [`string_span_escaped`](Self::string_span_escaped),
    /// inlined into [`string`](Self::string) as well.
    #[inline(always)]
    fn escaped_span(&mut self, s: &str) -> (std::ops::Range<usize>, usize) {
        self.text.push_str("\\\"");
        let start = self.text.len();
        let added = push_escaped_twice(&mut self.text, s);
        let end = self.text.len();
        self.text.push_str("\\\"");
        self.add(2 + added);
        (start..end, added)
    }

    /// [`string`](Self::string) of bytes that may not be UTF-8 (a syslog
    /// field): invalid sequences become U+FFFD (the bytes are kept in
    /// `Text`/`Payload` beside it). `ascii`: `b` is known to be ASCII (cut
    /// from an ASCII payload), so it needs no check.
    pub fn string_lossy(&mut self, b: &[u8], ascii: bool) {
        self.string_lossy_span(b, ascii);
    }

    /// [`string_lossy`](Self::string_lossy) with
    /// [`string_span`](Self::string_span)'s answer, when `b` was UTF-8.
    #[inline(always)]
    fn string_lossy_span(
        &mut self,
        b: &[u8],
        ascii: bool,
    ) -> Option<(std::ops::Range<usize>, usize)> {
        if ascii {
            debug_assert!(b.is_ascii());
            // SAFETY: ASCII is UTF-8 (the caller's word that `b` is ASCII).
            return Some(self.string_span(unsafe { std::str::from_utf8_unchecked(b) }));
        }
        match std::str::from_utf8(b) {
            Ok(s) => Some(self.string_span(s)),
            Err(_) => {
                self.string(&String::from_utf8_lossy(b));
                None
            }
        }
    }

    /// JSON text written as it is (already a JSON value), escaped once.
    pub fn json(&mut self, json: &str) {
        let before = self.text.len();
        push_escaped(&mut self.text, json);
        self.add(self.text.len() - before - json.len());
    }

    /// Bytes of the text the JSON would have (what AWS counts).
    pub fn json_len(&self) -> usize {
        self.text.len() - self.added as usize
    }

    pub fn finish(self) -> Detail {
        Detail {
            json_len: self.text.len() - self.added as usize,
            escaped: self.text,
        }
    }
}

/// A [`DetailWriter`] written through a pointer, length and capacity held
/// in registers, for runs of short writes (a syslog line's fields, keys and
/// punctuation): each write of the `String` itself loads the length the
/// write before it stored, and the stores and loads were the larger part
/// of those writes' time. The length (and the bytes escaping added) go
/// back to the writer when the cursor is dropped.
struct Cursor<'w> {
    w: &'w mut DetailWriter,
    ptr: *mut u8,
    len: usize,
    cap: usize,
    added: usize,
}

impl<'w> Cursor<'w> {
    #[inline(always)]
    fn new(w: &'w mut DetailWriter) -> Self {
        // SAFETY: only whole UTF-8 text is written through the cursor (see
        // its methods), and the length it sets covers written bytes only.
        let v = unsafe { w.text.as_mut_vec() };
        let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
        Self {
            w,
            ptr,
            len,
            cap,
            added: 0,
        }
    }

    /// Makes room for `n` more bytes.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        if self.cap - self.len < n {
            self.grow(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        self.sync();
        self.w.text.reserve(n);
        self.reload();
    }

    /// Gives the writer the length and the count written so far.
    #[inline(always)]
    fn sync(&mut self) {
        // SAFETY: the first `len` bytes are written (the writer's text,
        // then whole UTF-8 pieces appended through the cursor).
        unsafe { self.w.text.as_mut_vec().set_len(self.len) };
        self.w.add(self.added);
        self.added = 0;
    }

    #[inline(always)]
    fn reload(&mut self) {
        // SAFETY: as in `new`.
        let v = unsafe { self.w.text.as_mut_vec() };
        (self.ptr, self.len, self.cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    }

    /// Runs `f` on the writer itself (for a write the cursor does not do).
    #[inline(always)]
    fn with_writer<R>(&mut self, f: impl FnOnce(&mut DetailWriter) -> R) -> R {
        self.sync();
        let r = f(self.w);
        self.reload();
        r
    }

    /// Appends `b`, whole UTF-8 text (the callers' word).
    #[inline(always)]
    fn put(&mut self, b: &[u8]) {
        self.room(b.len());
        // SAFETY: `room` made space for `b` after the length.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(self.len), b.len());
        }
        self.len += b.len();
    }

    /// Text written as it is in both forms (digits).
    #[inline(always)]
    fn plain(&mut self, s: &str) {
        self.put(s.as_bytes());
    }

    /// Escaped text whose escaping added `added` bytes (use [`lit!`] for
    /// literals).
    #[inline(always)]
    fn lit(&mut self, escaped: &str, added: usize) {
        self.put(escaped.as_bytes());
        self.added += added;
    }

    /// Appends `b`, ASCII that needs no escaping (checked by the caller):
    /// up to 32 bytes as two overlapping copies of a fixed size each (a
    /// buffer padded to sixteen bytes and cut back, as `push16` stores,
    /// costs a shift of 128 bits by a variable amount to build).
    #[inline(always)]
    fn copy_ascii(&mut self, b: &[u8]) {
        debug_assert!(b.is_ascii() && count_escapes(b) == 0);
        let n = b.len();
        if n > 32 {
            self.put(b);
            return;
        }
        self.room(32);
        // SAFETY: 32 bytes are free after the length; the copies write
        // within them, and the length covers exactly the `n` written.
        unsafe {
            let dst = self.ptr.add(self.len);
            if n <= 16 {
                copy_short(b.as_ptr(), dst, n);
            } else {
                copy16(b.as_ptr(), dst);
                copy16(b.as_ptr().add(n - 16), dst.add(n - 16));
            }
        }
        self.len += n;
    }

    /// Appends a copy of `run`, text written before (escaping `added`).
    #[inline(always)]
    fn copy_run(&mut self, run: std::ops::Range<usize>, added: usize) {
        assert!(run.start <= run.end && run.end <= self.len);
        let n = run.end - run.start;
        self.room(n);
        // SAFETY: `run` lies within the written bytes, wholly before the
        // space `room` made after them, so the two do not overlap; the
        // run was written as whole UTF-8 pieces.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(run.start), self.ptr.add(self.len), n);
        }
        self.len += n;
        self.added += added;
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        self.sync();
    }
}

/// Appends `,"<Key>":<value>` for `payload` in `format`, the `Format`
/// member excepted, and returns the format the payload was written in
/// (`Base64` when it fell back). `received` is the capture's wall-clock
/// time (it dates an RFC 3164 stamp, which has no year).
pub fn write_payload(
    w: &mut DetailWriter,
    format: Format,
    payload: &[u8],
    received: SystemTime,
) -> Format {
    match format {
        Format::Base64 => {}
        Format::Text => {
            if let Ok(text) = std::str::from_utf8(payload) {
                lit!(w, r#",\"Text\":"#);
                w.string(text);
                return Format::Text;
            }
        }
        Format::Hex => {
            lit!(w, r#",\"Hex\":\""#);
            faster_hex::hex_append(payload, &mut w.text);
            lit!(w, r#"\""#);
            return Format::Hex;
        }
        Format::Json => {
            if let Some(json) = as_json(payload) {
                lit!(w, r#",\"Json\":"#);
                w.json(json);
                return Format::Json;
            }
        }
        Format::Syslog => {
            write_syslog_payload(w, payload, received);
            return Format::Syslog;
        }
    }
    write_base64(w, payload);
    Format::Base64
}

/// The `syslog` format's members. Out of line: inlined, its code changes
/// how the other formats' paths in `write_payload` are compiled (the
/// `json` path measured 70 instructions more per event).
#[inline(never)]
fn write_syslog_payload(w: &mut DetailWriter, payload: &[u8], received: SystemTime) {
    // One check of the whole payload spares one per field: every
    // field of an ASCII payload is ASCII.
    let ascii = is_ascii(payload);
    let text = if ascii {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(payload) })
    } else {
        std::str::from_utf8(payload).ok()
    };
    let mut sd = syslog::SdList::new();
    let mut m = syslog::Message::default();
    syslog::parse_into(payload, &mut sd, &mut m);
    lit!(w, r#",\"Syslog\":"#);
    if ascii && let Some(plain) = PlainLine::of(payload, &m, &sd) {
        write_plain_syslog(w, payload, &m, &plain, received);
        return;
    }
    let message = write_syslog(w, &m, &sd, received, ascii);
    match text {
        Some(text) => {
            lit!(w, r#",\"Text\":"#);
            write_text(w, text, m.message, message);
        }
        None => write_base64(w, payload),
    }
}

/// An ASCII syslog line in which nothing before the message needs
/// escaping but the quotes around its structured data's values (the usual
/// header): its fields are copied as they are, without a test each, and
/// its `Text` is copied in runs between those quotes.
struct PlainLine<'p, 'a> {
    /// Where the message lies in the payload; what follows it (the line
    /// ends and NULs trimmed from it) is escaped as usual.
    message: std::ops::Range<usize>,
    /// Nothing in the message needs escaping either. Otherwise it goes
    /// through the escaper once, and its `Text` copies that run.
    message_plain: bool,
    /// The structured data's parameters in the order sent (none without
    /// structured data).
    params: &'p [syslog::SdParam<'a>],
}

impl<'p, 'a> PlainLine<'p, 'a> {
    /// `m`, parsed from `payload` (ASCII), if it is such a line.
    fn of(payload: &'a [u8], m: &syslog::Message<'a>, sd: &'p syslog::SdList<'a>) -> Option<Self> {
        let params = match m.structured_data {
            Some(_) => sd.params()?,
            None => &[],
        };
        let start = offset_in(payload, m.message)?;
        // Every parameter has its two quotes: as many escapes in all means
        // none anywhere else, nor a quote or backslash inside a value.
        let quotes = 2 * params.iter().filter(|p| p.param.is_some()).count();
        (count_escapes(&payload[..start]) == quotes).then(|| Self {
            message: start..start + m.message.len(),
            message_plain: count_escapes(m.message) == 0,
            params,
        })
    }
}

/// Where `inner` starts in `outer`, if it is a part of it.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let at = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    (at <= outer.len() && inner.len() <= outer.len() - at).then_some(at)
}

/// The `Syslog` object and the `Text` of a [`PlainLine`] (`payload`, ASCII,
/// parsed as `m`): fields and runs copied as they are through a [`Cursor`],
/// the message through the escaper when it needs it, and its `Text` a copy
/// of that.
fn write_plain_syslog(
    w: &mut DetailWriter,
    payload: &[u8],
    m: &syslog::Message<'_>,
    plain: &PlainLine<'_, '_>,
    received: SystemTime,
) {
    let mut c = Cursor::new(w);
    write_header_fields::<true>(&mut c, m, received, true);
    if let Some(sd) = m.structured_data {
        lit!(c, r#"\"StructuredData\":"#);
        c.with_writer(|w| write_structured_data(w, sd, Some(plain.params), true, true));
        lit!(c, r#","#);
    }
    let message = &payload[plain.message.clone()];
    let run = if plain.message_plain {
        lit!(c, r#"\"Message\":\""#);
        c.copy_ascii(message);
        lit!(c, r#"\"}"#);
        None
    } else {
        lit!(c, r#"\"Message\":"#);
        // SAFETY: ASCII is UTF-8 (the payload is ASCII).
        let message = unsafe { std::str::from_utf8_unchecked(message) };
        let run = c.with_writer(|w| w.string_span(message));
        lit!(c, r#"}"#);
        Some(run)
    };
    // `\\\"`, what a quote is in a string value of a kept-escaped Detail;
    // the JSON text AWS counts has `\"`, two bytes fewer.
    const QUOTE: &str = r#"\\\""#;
    lit!(c, r#",\"Text\":\""#);
    let mut from = 0;
    for p in plain.params {
        if let Some((_, value)) = p.param {
            // The value lies between its quotes in the payload.
            let open = value.as_ptr() as usize - payload.as_ptr() as usize - 1;
            let close = open + 1 + value.len();
            c.copy_ascii(&payload[from..open]);
            c.lit(QUOTE, 2);
            c.copy_ascii(&payload[open + 1..close]);
            c.lit(QUOTE, 2);
            from = close + 1;
        }
    }
    c.copy_ascii(&payload[from..plain.message.start]);
    match run {
        None => c.copy_ascii(message),
        Some((run, added)) => c.copy_run(run, added),
    }
    let tail = &payload[plain.message.end..];
    if !tail.is_empty() {
        // SAFETY: ASCII is UTF-8 (the payload is ASCII).
        let tail = unsafe { std::str::from_utf8_unchecked(tail) };
        c.with_writer(|w| {
            let added = push_escaped_twice(&mut w.text, tail);
            w.add(added);
        });
    }
    lit!(c, r#"\""#);
}

/// The syslog line as a string. The message is usually most of the line
/// and was just written, escaped the same way, as the `Message` field:
/// `message` says where (and what escaping it added), and that run is
/// copied rather than escaped again.
fn write_text(
    w: &mut DetailWriter,
    text: &str,
    message: &[u8],
    escaped: Option<(std::ops::Range<usize>, usize)>,
) {
    // Where `message` lies in `text`, if it is a part of it (it borrows
    // from the payload) on character boundaries.
    let at = message.as_ptr() as usize;
    let start = at.wrapping_sub(text.as_ptr() as usize);
    let end = start.wrapping_add(message.len());
    let parts = match escaped {
        Some((run, added)) if !message.is_empty() && start <= end && end <= text.len() => {
            match (text.get(..start), text.get(end..)) {
                (Some(head), Some(tail)) => Some((head, run, added, tail)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((head, run, added, tail)) = parts else {
        w.string(text);
        return;
    };
    w.text.push_str("\\\"");
    let mut more = 2 + added;
    more += push_escaped_twice(&mut w.text, head);
    w.text.extend_from_within(run);
    more += push_escaped_twice(&mut w.text, tail);
    w.text.push_str("\\\"");
    w.add(more);
}

/// `,"Format":"<name>"`.
pub fn write_format(w: &mut DetailWriter, format: Format) {
    match format {
        Format::Base64 => lit!(w, r#",\"Format\":\"base64\""#),
        Format::Text => lit!(w, r#",\"Format\":\"text\""#),
        Format::Hex => lit!(w, r#",\"Format\":\"hex\""#),
        Format::Json => lit!(w, r#",\"Format\":\"json\""#),
        Format::Syslog => lit!(w, r#",\"Format\":\"syslog\""#),
    }
}

fn write_base64(w: &mut DetailWriter, payload: &[u8]) {
    lit!(w, r#",\"Payload\":\""#);
    // Standard base64 (with padding): SIMD where the CPU has it
    // (`base64-simd` picks AVX2/SSSE3/NEON at run time), several times
    // faster than a scalar encoder on the long payloads.
    base64_simd::STANDARD.encode_append(payload, &mut w.text);
    lit!(w, r#"\""#);
}

/// The payload as JSON text, if it is one JSON value (object, array or
/// scalar, surrounding whitespace allowed). Checked without building the
/// value ([`json::is_one_value`], serde_json's answer; serde_json itself
/// for deep nesting); the text itself goes into the Detail, so the value
/// is exactly the one sent (numbers keep all their digits).
fn as_json(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    let json = json::is_one_value(payload)
        .unwrap_or_else(|| serde_json::from_str::<IgnoredAny>(text).is_ok());
    json.then_some(text)
}

/// The `Syslog` object's opening and its members before the structured
/// data: `Facility`, `Severity`, `Timestamp`, `Time`, `Hostname`,
/// `AppName`, `ProcId`, `MsgId`, each followed by its comma. Absent fields
/// are left out (a rule's `exists` tells them apart). `PLAIN`: the fields
/// need no escaping (a [`PlainLine`]'s) and are copied as they are;
/// otherwise each value goes through the escaper. `ascii`: the payload is
/// ASCII (so is every field). Inlined, so the cursor stays in registers.
#[inline(always)]
fn write_header_fields<const PLAIN: bool>(
    c: &mut Cursor<'_>,
    m: &syslog::Message<'_>,
    received: SystemTime,
    ascii: bool,
) {
    let mut num = itoa::Buffer::new();
    lit!(c, r#"{"#);
    if let (Some(facility), Some(severity)) = (m.facility(), m.severity()) {
        lit!(c, r#"\"Facility\":"#);
        c.plain(num.format(facility));
        lit!(c, r#",\"Severity\":"#);
        c.plain(num.format(severity));
        lit!(c, r#","#);
    }
    // A field's key, its string value and the comma after it. Each key is
    // given with its value's opening quote, which a plain value is copied
    // after and the escaper writes itself.
    #[inline(always)]
    fn field<const PLAIN: bool>(c: &mut Cursor<'_>, key: &str, b: &[u8], ascii: bool) {
        if PLAIN {
            // Three escaped quotes.
            c.lit(key, 3);
            c.copy_ascii(b);
            lit!(c, r#"\","#);
        } else {
            // Without the value's opening `\"`: two escaped quotes.
            c.lit(&key[..key.len() - 2], 2);
            c.with_writer(|w| w.string_lossy(b, ascii));
            lit!(c, r#","#);
        }
    }
    if let Some(ts) = m.timestamp {
        field::<PLAIN>(c, r#"\"Timestamp\":\""#, ts, ascii);
    }
    if let Some(stamp) = &m.stamp {
        lit!(c, r#"\"Time\":\""#);
        write_iso8601(c, stamp, received);
        lit!(c, r#"\","#);
    }
    for (key, value) in [
        (r#"\"Hostname\":\""#, m.hostname),
        (r#"\"AppName\":\""#, m.app_name),
        (r#"\"ProcId\":\""#, m.proc_id),
        (r#"\"MsgId\":\""#, m.msg_id),
    ] {
        if let Some(v) = value {
            field::<PLAIN>(c, key, v, ascii);
        }
    }
}

/// The `Syslog` object. Absent fields are left out (a rule's `exists`
/// tells them apart); `Message` is always there. `ascii`: the payload is
/// ASCII (so is every field); `sd_list`: the structured data's
/// parameters, as the parser found them. Returns where the message's escaped text is in
/// `w` (see [`DetailWriter::string_span`]), when it was UTF-8. A
/// [`PlainLine`] goes to [`write_plain_syslog`] instead.
fn write_syslog(
    w: &mut DetailWriter,
    m: &syslog::Message<'_>,
    sd_list: &syslog::SdList<'_>,
    received: SystemTime,
    ascii: bool,
) -> Option<(std::ops::Range<usize>, usize)> {
    write_header_fields::<false>(&mut Cursor::new(w), m, received, ascii);
    if let Some(sd) = m.structured_data {
        lit!(w, r#"\"StructuredData\":"#);
        write_structured_data(w, sd, sd_list.params(), ascii, false);
        lit!(w, r#","#);
    }
    lit!(w, r#"\"Message\":"#);
    let message = w.string_lossy_span(m.message, ascii);
    lit!(w, r#"}"#);
    message
}

/// `{"SD-ID":{"name":"value",…},…}`. A name repeated within an element
/// (RFC 5424 allows it) becomes an array of its values, and an SD-ID
/// repeated in a message is merged, so the object has no duplicate keys.
/// `few`: the parameters as the parser found them, when there were a few
/// (the usual case), otherwise they are read from `sd` into a vector.
/// `ascii`: the payload is ASCII. `plain`: nothing in `sd` needs escaping
/// but the quotes around its values (the caller counted).
fn write_structured_data(
    w: &mut DetailWriter,
    sd: &[u8],
    few: Option<&[syslog::SdParam<'_>]>,
    ascii: bool,
    plain: bool,
) {
    let mut many = Vec::new();
    let few = few.unwrap_or_else(|| {
        many.extend(syslog::SdParams::new(sd));
        &[]
    });
    fn name<'a>(p: &syslog::SdParam<'a>) -> Option<&'a [u8]> {
        p.param.map(|p| p.0)
    }
    fn value<'a>(p: &syslog::SdParam<'a>) -> &'a [u8] {
        p.param.map_or(&[], |p| p.1)
    }
    fn same_name(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        }
    }
    // Written in groups of one SD-ID, then one name. Usually they come so
    // (each SD-ID once, each name once in it), checked pairwise for a
    // few; otherwise a stable sort groups them, keeping values in order.
    let grouped = many.is_empty()
        && (1..few.len()).all(|i| {
            (0..i).all(|k| {
                !same(few[k].id, few[i].id)
                    || (same(few[i - 1].id, few[i].id) && !same_name(name(&few[k]), name(&few[i])))
            })
        });
    let params = if grouped {
        few
    } else {
        if many.is_empty() {
            many.extend_from_slice(few);
        }
        many.sort_by(|a, b| (a.id, name(a)).cmp(&(b.id, name(b))));
        &many[..]
    };
    // Usually nothing in the structured data needs escaping but the quotes
    // around its values (two per parameter), and no value has an SD
    // escape (a backslash would be counted): then ids, names and values
    // are copied as they are, without a call to the escaper for each.
    let plain = plain
        || (ascii || std::str::from_utf8(sd).is_ok())
            && count_escapes(sd) == 2 * params.iter().filter(|p| p.param.is_some()).count();
    if grouped && plain {
        write_plain_structured_data(w, params, ascii);
        return;
    }
    lit!(w, r#"{"#);
    let mut i = 0;
    while i < params.len() {
        let id = params[i].id;
        if i > 0 {
            lit!(w, r#","#);
        }
        w.string_lossy(id, ascii);
        lit!(w, r#":{"#);
        let mut first = true;
        while i < params.len() && same(params[i].id, id) {
            let Some((name, _)) = params[i].param else {
                i += 1;
                continue;
            };
            // Grouped as they came, each name is there once in its SD-ID.
            let count = if grouped {
                1
            } else {
                params[i..]
                    .iter()
                    .take_while(|p| same(p.id, id) && same_name(p.param.map(|p| p.0), Some(name)))
                    .count()
            };
            let values = &params[i..i + count];
            i += count;
            if !first {
                lit!(w, r#","#);
            }
            first = false;
            w.string_lossy(name, ascii);
            lit!(w, r#":"#);
            if let [one] = values {
                w.string_lossy(&syslog::sd_unescape(value(one)), ascii);
            } else {
                lit!(w, r#"["#);
                for (k, p) in values.iter().enumerate() {
                    if k > 0 {
                        lit!(w, r#","#);
                    }
                    w.string_lossy(&syslog::sd_unescape(value(p)), ascii);
                }
                lit!(w, r#"]"#);
            }
        }
        lit!(w, r#"}"#);
    }
    lit!(w, r#"}"#);
}

/// [`write_structured_data`]'s object for parameters that came grouped
/// (an SD-ID's run of parameters, each name once in it), from UTF-8
/// structured data in which nothing needs escaping (`ascii`: from an ASCII
/// payload).
fn write_plain_structured_data(w: &mut DetailWriter, params: &[syslog::SdParam<'_>], ascii: bool) {
    let mut c = Cursor::new(w);
    let copy = |c: &mut Cursor<'_>, b: &[u8]| {
        if ascii {
            c.copy_ascii(b);
            return;
        }
        debug_assert!(std::str::from_utf8(b).is_ok());
        // `b` is cut from UTF-8 structured data at its ASCII delimiters
        // (the caller checked the whole is UTF-8), so it is UTF-8 itself.
        c.put(b);
    };
    debug_assert!(!params.is_empty());
    lit!(c, r#"{\""#);
    let mut i = 0;
    while i < params.len() {
        let id = params[i].id;
        copy(&mut c, id);
        lit!(c, r#"\":{"#);
        // A value's closing quote is written with what follows it.
        let mut open = false;
        // Consecutive elements of one SD-ID are one run, as in
        // `write_structured_data`.
        while i < params.len() && same(params[i].id, id) {
            if let Some((name, value)) = params[i].param {
                if open {
                    lit!(c, r#"\",\""#);
                } else {
                    lit!(c, r#"\""#);
                }
                copy(&mut c, name);
                lit!(c, r#"\":\""#);
                copy(&mut c, value);
                open = true;
            }
            i += 1;
        }
        // The run's object closed, and the next run's key opened.
        match (open, i < params.len()) {
            (true, true) => lit!(c, r#"\"},\""#),
            (true, false) => lit!(c, r#"\"}"#),
            (false, true) => lit!(c, r#"},\""#),
            (false, false) => lit!(c, r#"}"#),
        }
    }
    lit!(c, r#"}"#);
}

/// Equal byte strings: the same slice (an element's SD-ID, for each of its
/// parameters) without comparing bytes, and different names of one length
/// (`old-state`, `new-state`) mostly told apart by their ends before a
/// call to `bcmp`.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && (a.as_ptr() == b.as_ptr() || (a.first() == b.first() && a.last() == b.last() && a == b))
}

/// The year and month (UTC) of `t`, remembered with the bounds of its day
/// on this thread: every RFC 3164 stamp (it has no year) asks for the day
/// it was received, which changes once a day. A hit costs two comparisons
/// of the time; converting it (`duration_since`, then the civil date) took
/// 9% of such an event's encoding time.
fn year_month(t: SystemTime) -> (i64, u8) {
    use std::{cell::Cell, time::Duration};
    thread_local! {
        static LAST: Cell<Option<(SystemTime, SystemTime, i64, u8)>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        if let Some((from, to, year, month)) = last.get()
            && from <= t
            && t < to
        {
            return (year, month);
        }
        let days = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400);
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400);
        let (year, month, _) = clock::civil_from_days(days as i64);
        last.set(Some((
            from,
            from + Duration::from_secs(86_400),
            year,
            month,
        )));
        (year, month)
    })
}

/// The stamp as ISO 8601 from its [`utc_fields`]: in UTC (`…Z`) when it
/// named its zone, as the sender's local time (no offset) when it did not;
/// the fraction as sent. Any year, written into a buffer a byte at a time:
/// what [`write_iso8601`] leaves to it (years without four digits), and
/// the reference its tests compare with.
fn iso8601(s: &Stamp<'_>, (y, mo, d, h, mi): (i64, u8, u8, u8, u8)) -> ([u8; 48], usize) {
    let mut buf = [0u8; 48];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    let two = |v: u8| [b'0' + v / 10, b'0' + v % 10];
    if (0..=9999).contains(&y) {
        let y = y as u16;
        put(&two((y / 100) as u8));
        put(&two((y % 100) as u8));
    } else {
        put(itoa::Buffer::new().format(y).as_bytes());
    }
    put(b"-");
    put(&two(mo));
    put(b"-");
    put(&two(d));
    put(b"T");
    put(&two(h));
    put(b":");
    put(&two(mi));
    put(b":");
    put(&two(s.second));
    if !s.fraction.is_empty() {
        put(b".");
        // ASCII digits (checked by the parser), at most nine.
        put(s.fraction);
    }
    if s.offset_minutes.is_some() {
        put(b"Z");
    }
    // ASCII digits and punctuation, and the fraction's ASCII digits
    // (checked by the parser).
    debug_assert!(buf[..n].is_ascii());
    (buf, n)
}

/// [`iso8601`] appended through a cursor. A four-digit year's stamp is
/// composed in registers and stored a word at a time: stored a byte at a
/// time into a buffer and copied from it sixteen bytes at a time, each
/// copy's load waited for the bytes' stores to retire (a failed store
/// forward, 6% of an RFC 5424 event's time in perf).
#[inline(always)]
fn write_iso8601(c: &mut Cursor<'_>, s: &Stamp<'_>, received: SystemTime) {
    let fields @ (y, mo, d, h, mi) = utc_fields(s, received);
    if !(0..=9999).contains(&y) {
        let (buf, n) = iso8601(s, fields);
        c.put(&buf[..n]);
        return;
    }
    // Two digits as the little-endian `u16` of their bytes.
    let two = |v: u8| u64::from(b'0' + v / 10) | u64::from(b'0' + v % 10) << 8;
    let y = y as u16;
    // `YYYY-MM-`, `DDTHH:MM`, `:SS.`
    let date = two((y / 100) as u8)
        | two((y % 100) as u8) << 16
        | u64::from(b'-') << 32
        | two(mo) << 40
        | u64::from(b'-') << 56;
    let time =
        two(d) | u64::from(b'T') << 16 | two(h) << 24 | u64::from(b':') << 40 | two(mi) << 48;
    let secs = (u64::from(b':') | two(s.second) << 8 | u64::from(b'.') << 24) as u32;
    // ASCII digits (checked by the parser), at most nine.
    let fraction = s.fraction;
    debug_assert!(fraction.len() <= 9 && fraction.is_ascii());
    c.room(32);
    // SAFETY: 32 bytes are free after the length: 20 stored here, then at
    // most nine digits and a `Z`; all ASCII, and the length covers exactly
    // the bytes meant (the `.` only with a fraction after it).
    unsafe {
        let dst = c.ptr.add(c.len);
        dst.cast::<u64>().write_unaligned(date.to_le());
        dst.add(8).cast::<u64>().write_unaligned(time.to_le());
        dst.add(16).cast::<u32>().write_unaligned(secs.to_le());
        let mut n = 19;
        if !fraction.is_empty() {
            copy_short(fraction.as_ptr(), dst.add(20), fraction.len());
            n = 20 + fraction.len();
        }
        if s.offset_minutes.is_some() {
            *dst.add(n) = b'Z';
            n += 1;
        }
        c.len += n;
    }
}

/// A stamp's year, month, day, hour and minute: in UTC when it named its
/// zone, as sent otherwise; a stamp without a year gets the one closest to
/// `received`.
#[inline(always)]
fn utc_fields(s: &Stamp<'_>, received: SystemTime) -> (i64, u8, u8, u8, u8) {
    let year = match s.year {
        Some(y) => i64::from(y),
        None => {
            let (ry, rm) = year_month(received);
            s.resolve_year(ry, rm)
        }
    };
    let (mut y, mut mo, mut d, mut h, mut mi) = (year, s.month, s.day, s.hour, s.minute);
    if let Some(offset) = s.offset_minutes {
        let of_day = i64::from(s.hour) * 60 + i64::from(s.minute) - i64::from(offset);
        if !(0..1440).contains(&of_day) {
            // Another day in UTC: the date goes through a day count (most
            // stamps stay on their day, and skip the two conversions).
            let minutes = clock::days_from_civil(year, s.month, s.day) * 1440 + of_day;
            (y, mo, d) = clock::civil_from_days(minutes.div_euclid(1440));
        }
        let of_day = of_day.rem_euclid(1440);
        (h, mi) = ((of_day / 60) as u8, (of_day % 60) as u8);
    }
    (y, mo, d, h, mi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered day is left when the time leaves it, either way,
    /// and the month read again.
    #[test]
    fn received_month_follows_the_day() {
        use std::time::Duration;
        let at = |days: i64, secs: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400 + secs)
        };
        let nov30 = clock::days_from_civil(2026, 11, 30);
        let dec31 = clock::days_from_civil(2026, 12, 31);
        for (t, want) in [
            (at(nov30, 0), (2026, 11)),
            (at(nov30, 86_399), (2026, 11)),
            (at(nov30 + 1, 0), (2026, 12)),
            (at(nov30, 43_200), (2026, 11)),
            (at(dec31, 86_399), (2026, 12)),
            (at(dec31 + 1, 0), (2027, 1)),
            (SystemTime::UNIX_EPOCH - Duration::from_secs(1), (1970, 1)),
            (at(nov30 + 1, 1), (2026, 12)),
        ] {
            assert_eq!(year_month(t), want, "{t:?}");
        }
    }

    /// The cursor's stamp, composed a word at a time, is the buffer's: for
    /// every fraction length, with and without a zone and a year, and for
    /// a year that leaves four digits in UTC.
    #[test]
    fn stamp_writers_agree() {
        let received = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let digits = b"123456789";
        for year in [None, Some(1), Some(2026), Some(9999)] {
            for n in 0..=9 {
                for offset in [None, Some(0), Some(-60), Some(330)] {
                    let stamp = Stamp {
                        year,
                        month: 12,
                        day: 31,
                        hour: 23,
                        minute: 59,
                        second: 58,
                        fraction: &digits[..n],
                        offset_minutes: offset,
                    };
                    let (buf, len) = iso8601(&stamp, utc_fields(&stamp, received));
                    let want = std::str::from_utf8(&buf[..len]).unwrap();
                    let mut w = DetailWriter::with_capacity(0);
                    w.text.push('x');
                    write_iso8601(&mut Cursor::new(&mut w), &stamp, received);
                    assert_eq!(w.text, format!("x{want}"), "{stamp:?}");
                }
            }
        }
        let far = Stamp {
            year: Some(9999),
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            second: 0,
            fraction: b"",
            offset_minutes: Some(-60),
        };
        let mut w = DetailWriter::with_capacity(0);
        write_iso8601(&mut Cursor::new(&mut w), &far, received);
        assert_eq!(w.text, "10000-01-01T00:59:00Z");
    }

    /// A stamp with a zone is written in UTC: on its own day, or across a
    /// day, month, year or leap-day boundary, as the whole minute count says.
    #[test]
    fn zoned_stamps_move_to_utc_across_days() {
        for (year, month, day) in [(2026, 1, 1), (2024, 2, 29), (2026, 2, 28), (2026, 12, 31)] {
            for (hour, minute) in [(0, 0), (0, 29), (12, 0), (23, 59)] {
                for offset in (-14 * 60..=14 * 60).step_by(30) {
                    let stamp = Stamp {
                        year: Some(year as u16),
                        month,
                        day,
                        hour,
                        minute,
                        second: 7,
                        fraction: b"25",
                        offset_minutes: Some(offset as i16),
                    };
                    let minutes = clock::days_from_civil(year, month, day) * 1440
                        + i64::from(hour) * 60
                        + i64::from(minute)
                        - offset;
                    let (y, m, d) = clock::civil_from_days(minutes.div_euclid(1440));
                    let of_day = minutes.rem_euclid(1440);
                    let want = format!(
                        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:07.25Z",
                        of_day / 60,
                        of_day % 60
                    );
                    let (buf, n) = iso8601(&stamp, utc_fields(&stamp, SystemTime::UNIX_EPOCH));
                    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want, "{stamp:?}");
                    let mut w = DetailWriter::with_capacity(0);
                    write_iso8601(&mut Cursor::new(&mut w), &stamp, SystemTime::UNIX_EPOCH);
                    assert_eq!(w.text, want, "{stamp:?}");
                }
            }
        }
    }
}
