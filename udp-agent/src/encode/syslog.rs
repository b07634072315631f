//! Syslog messages, parsed for the `syslog` format: RFC 5424, RFC 3164, and
//! the variants network gear sends under that name.
//!
//! Parsing never fails: what follows neither RFC still has a `message` (the
//! whole payload, or what follows its priority), and the caller keeps the
//! payload's bytes beside the fields (`Text` or `Payload`), so nothing a
//! loose reading gets wrong is lost. Fields borrow from the payload; only a
//! field that is not UTF-8 is copied, lossily, when it is written.
//!
//! Hand-written rather than `syslog_loose` (the parser vector uses), which
//! was measured against it on the same corpus (`examples/syslog_speed.rs`,
//! bench/RESULTS.md): `syslog_loose` returns neither the timestamp as sent
//! nor the priority of a line whose header it cannot read (it gives the
//! whole line as the message with no priority), rejects the Cisco stamps
//! (sequence numbers, `*`, milliseconds, a trailing colon), needs the
//! payload as `&str`, and fills in the year and zone of an RFC 3164 stamp
//! from the host's local time; it is also several times slower. The tests
//! check this parser against it on the lines both read.
//!
//! What is recognised:
//! - `<PRI>` (0-191) at the start; without one, no facility or severity
//!   (an RFC 3164 header is still read).
//! - RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`,
//!   `-` for an absent field, structured data `[id name="value" …]…` with
//!   `\"`, `\\` and `\]` escapes, a leading BOM dropped from the message.
//! - RFC 3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`, and the
//!   variants: a year after the day (`Nov 27 2026 23:42:18`, Cisco ASA),
//!   fractional seconds, a `*` or `.` before the stamp and a `:` after it
//!   (Cisco IOS, whose sequence number `52: ` and `host: ` may come
//!   first), a zone after the stamp (`UTC`), an RFC 3339 stamp in place of
//!   the BSD one (rsyslog's forwarding format), no hostname, no tag. A
//!   first word that ends in `:` and is not a tag (`%ASA-6-302013:`) is
//!   the message's start, not a hostname.
//! - The message loses trailing line ends and NULs (`\n`, `\r`, `\0`):
//!   rules on it should not depend on how the sender ended its line.

/// A parsed message; absent fields are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// The priority, facility × 8 + severity.
    pub pri: Option<u8>,
    /// The timestamp as sent.
    pub timestamp: Option<&'a [u8]>,
    /// The timestamp, read (when it could be).
    pub stamp: Option<Stamp<'a>>,
    pub hostname: Option<&'a [u8]>,
    pub app_name: Option<&'a [u8]>,
    pub proc_id: Option<&'a [u8]>,
    pub msg_id: Option<&'a [u8]>,
    /// RFC 5424 structured data, checked well-formed (see [`sd_params`]).
    pub structured_data: Option<&'a [u8]>,
    pub message: &'a [u8],
}

impl Message<'_> {
    pub fn facility(&self) -> Option<u8> {
        self.pri.map(|p| p >> 3)
    }

    pub fn severity(&self) -> Option<u8> {
        self.pri.map(|p| p & 7)
    }
}

/// A timestamp's parts as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// `None` for an RFC 3164 stamp without one (the reader picks the year
    /// closest to the capture: [`Stamp::resolve_year`]).
    pub year: Option<u16>,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// The digits after the decimal point, as sent (empty if none).
    pub fraction: &'a [u8],
    /// Minutes east of UTC; `None` when the sender named no zone (its
    /// local time, whatever that is).
    pub offset_minutes: Option<i16>,
}

impl Stamp<'_> {
    /// The year of a stamp sent without one, received in `year`-`month`:
    /// the one that puts it within six months of the capture (a December
    /// line read in January is last year's).
    pub fn resolve_year(&self, year: i64, month: u8) -> i64 {
        if let Some(y) = self.year {
            return i64::from(y);
        }
        let (sent, now) = (i64::from(self.month), i64::from(month));
        if sent - now > 6 {
            year - 1
        } else if now - sent > 6 {
            year + 1
        } else {
            year
        }
    }
}

/// Reads a syslog message. Never fails: see the module's comment.
pub fn parse(payload: &[u8]) -> Message<'_> {
    let mut m = Message::default();
    parse_into(payload, &mut SdList::new(), &mut m);
    m
}

/// [`parse`] into `out` (which it overwrites), also keeping in `sd` the
/// parameters of the structured data (when the message has some), found
/// as it is checked. The encoder's way: a message returned by value is
/// copied with `memcpy`, and each field the encoder then reads waits for
/// that copy's wide stores (a failed store forward, 8% of an RFC 5424
/// event's time in perf); written here, field by field, they are read
/// back from the stores that wrote them.
pub fn parse_into<'a>(payload: &'a [u8], sd: &mut SdList<'a>, out: &mut Message<'a>) {
    let Some((pri, rest)) = priority(payload) else {
        // A BSD header without its priority (what a relay may forward).
        if !rfc3164(None, payload, out) {
            *out = Message {
                message: trim_end(payload),
                ..Message::default()
            };
        }
        return;
    };
    if rfc5424(pri, rest, sd, out).is_none() && !rfc3164(Some(pri), rest, out) {
        *out = Message {
            pri: Some(pri),
            message: trim_end(rest),
            ..Message::default()
        };
    }
}

/// `<PRI>`: one to three digits, at most 191 (facility 23, severity 7).
fn priority(b: &[u8]) -> Option<(u8, &[u8])> {
    let rest = b.strip_prefix(b"<")?;
    let digits = rest
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') {
        return None;
    }
    let pri = number(&rest[..digits])?;
    (pri <= 191).then(|| (pri as u8, &rest[digits + 1..]))
}

/// An RFC 5424 message, into `out` (left as it was when `rest` is not one).
fn rfc5424<'a>(pri: u8, rest: &'a [u8], sd: &mut SdList<'a>, out: &mut Message<'a>) -> Option<()> {
    // VERSION: a non-zero number of at most two digits ("1" today).
    let digits = rest
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=2).contains(&digits) || rest[0] == b'0' || rest.get(digits) != Some(&b' ') {
        return None;
    }
    let r = &rest[digits + 1..];
    let (timestamp, r) = header_field(r)?;
    let (hostname, r) = header_field(r)?;
    let (app_name, r) = header_field(r)?;
    let (proc_id, r) = header_field(r)?;
    let (msg_id, r) = header_field(r)?;
    let (structured_data, after) = match r.first() {
        Some(b'-') => (None, &r[1..]),
        Some(b'[') => {
            let n = sd_len(r, sd)?;
            (Some(&r[..n]), &r[n..])
        }
        _ => return None,
    };
    let message = match after {
        [] => after,
        [b' ', msg @ ..] => msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg),
        _ => return None,
    };
    *out = Message {
        pri: Some(pri),
        timestamp: nil(timestamp),
        stamp: rfc3339(timestamp)
            .filter(|(_, n)| *n == timestamp.len())
            .map(|(s, _)| s),
        hostname: nil(hostname),
        app_name: nil(app_name),
        proc_id: nil(proc_id),
        msg_id: nil(msg_id),
        structured_data,
        message: trim_end(message),
    };
    Some(())
}

/// An RFC 5424 header field (not empty) and what follows its space. A
/// function of its own, not a closure over the rest: the position then
/// stays in a register instead of memory as the bytes are scanned.
#[inline]
fn header_field(r: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = find_any(r, 0, [b' ']);
    (end > 0 && end < r.len()).then(|| (&r[..end], &r[end + 1..]))
}

/// The index of the first byte at or after `i` that is one of `set`, or
/// `b.len()` if none is (`i` itself if it is past the end). Sixteen bytes
/// at a time where sixteen remain: structured data is mostly values and
/// names between delimiters, walked twice (checked, then read).
#[inline(always)]
fn find_any<const K: usize>(b: &[u8], mut i: usize, set: [u8; K]) -> usize {
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= b.len() {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8, _mm_setzero_si128,
        };
        // SAFETY: SSE2 is always there on x86-64; the load reads the
        // sixteen bytes of `b` at `i`.
        let m = unsafe {
            let x = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            let mut hit = _mm_setzero_si128();
            for c in set {
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8)));
            }
            _mm_movemask_epi8(hit) as u32
        };
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while i < b.len() && !set.contains(&b[i]) {
        i += 1;
    }
    i
}

/// RFC 5424's NILVALUE.
fn nil(field: &[u8]) -> Option<&[u8]> {
    (field != b"-").then_some(field)
}

/// An RFC 3164 message (or a vendor's variant), into `out` (left as it
/// was when `rest` has no BSD header).
fn rfc3164<'a>(pri: Option<u8>, rest: &'a [u8], out: &mut Message<'a>) -> bool {
    let Some((hostname, timestamp, stamp, after)) = header_3164(rest) else {
        return false;
    };
    *out = Message {
        pri,
        timestamp: Some(timestamp),
        stamp: Some(stamp),
        hostname,
        ..Message::default()
    };
    let m = out;
    let mut r = trim_start(after);
    if m.hostname.is_none() {
        let (word, tail) = word(r);
        if let Some((app, pid)) = tag(word) {
            m.app_name = Some(app);
            m.proc_id = pid;
            m.message = trim_end(tail.strip_prefix(b" ").unwrap_or(tail));
            return true;
        }
        if !word.is_empty() && !word.ends_with(b":") && tail.first() == Some(&b' ') {
            m.hostname = Some(word);
            r = trim_start(tail);
        }
    }
    // Cisco ASA puts " : " between its device id and the message.
    if let Some(t) = r.strip_prefix(b": ") {
        r = t;
    }
    let (word, tail) = word(r);
    if let Some((app, pid)) = tag(word) {
        m.app_name = Some(app);
        m.proc_id = pid;
        r = tail.strip_prefix(b" ").unwrap_or(tail);
    }
    m.message = trim_end(r);
    true
}

/// The stamp of an RFC 3164 header and what precedes it: returns the
/// hostname that came before it (Cisco's `host: `), the stamp as sent and
/// read, and what follows it.
#[allow(clippy::type_complexity)]
fn header_3164(rest: &[u8]) -> Option<(Option<&[u8]>, &[u8], Stamp<'_>, &[u8])> {
    // Cisco IOS: a sequence number first ("52: "), then maybe "host: ".
    let after_seq = {
        let d = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        (d > 0).then(|| rest[d..].strip_prefix(b": ")).flatten()
    };
    if let Some((ts, stamp, after)) = stamp_3164(rest) {
        return Some((None, ts, stamp, after));
    }
    if let Some(r) = after_seq
        && let Some((ts, stamp, after)) = stamp_3164(r)
    {
        return Some((None, ts, stamp, after));
    }
    // "host: " and the stamp, after the sequence number or without one.
    after_seq.into_iter().chain([rest]).find_map(|start| {
        let (host, tail) = word(start);
        let host = host.strip_suffix(b":").filter(|h| !h.is_empty())?;
        let (ts, stamp, after) = stamp_3164(tail.strip_prefix(b" ")?)?;
        Some((Some(host), ts, stamp, after))
    })
}

/// A BSD stamp (`Mmm dd [yyyy] hh:mm:ss[.fff] [ZONE]`, maybe after `*` or
/// `.`, maybe followed by `:`) or an RFC 3339 one at the start of `b`, then
/// a space or the end.
fn stamp_3164(b: &[u8]) -> Option<(&[u8], Stamp<'_>, &[u8])> {
    let skip = usize::from(matches!(b.first(), Some(b'*' | b'.')));
    let (stamp, len) = rfc3339(&b[skip..]).or_else(|| bsd_stamp(&b[skip..]))?;
    let end = skip + len;
    let mut after = &b[end..];
    if let Some(a) = after.strip_prefix(b":") {
        after = a;
    }
    if !(after.is_empty() || after[0] == b' ') {
        return None;
    }
    Some((&b[..end], stamp, after))
}

fn bsd_stamp(b: &[u8]) -> Option<(Stamp<'_>, usize)> {
    let month = month(b.get(..3)?)?;
    let (day, year, (hour, minute, second), mut i) = bsd_usual(b).or_else(|| bsd_loose(b))?;
    let fraction = fraction(&b[i..]);
    if !fraction.is_empty() {
        i += 1 + fraction.len();
    }
    // A zone (Cisco's `show-timezone`): capitals, then the `:` that ends
    // Cisco's stamp. Only UTC and GMT say what the offset is.
    let mut offset_minutes = None;
    if let Some(rest) = b[i..].strip_prefix(b" ") {
        let z = rest
            .iter()
            .take(6)
            .take_while(|c| c.is_ascii_uppercase())
            .count();
        if (1..=5).contains(&z) && rest.get(z) == Some(&b':') {
            if matches!(&rest[..z], b"UTC" | b"GMT" | b"Z") {
                offset_minutes = Some(0);
            }
            i += 1 + z;
        }
    }
    let stamp = Stamp {
        year,
        month,
        day,
        hour,
        minute,
        second,
        fraction,
        offset_minutes,
    };
    valid(&stamp).then_some((stamp, i))
}

/// A BSD stamp's day, year (Cisco ASA), time of day and length, as far as
/// its time of day.
type BsdParts = (u8, Option<u16>, (u8, u8, u8), usize);

/// The usual BSD stamp after its month, `Mmm dd hh:mm:ss` (a day below
/// ten padded with a space), read at fixed places: the day, no year, the
/// time of day, and the length (15). Anything else is left to
/// [`bsd_loose`], which reads these the same way.
#[inline(always)]
fn bsd_usual(b: &[u8]) -> Option<BsdParts> {
    let h = b.first_chunk::<15>()?;
    if h[3] != b' ' || h[6] != b' ' {
        return None;
    }
    let day = if h[4] == b' ' {
        two_digits(b'0', h[5])?
    } else {
        two_digits(h[4], h[5])?
    };
    Some((day, None, clock(h[7..].first_chunk::<8>()?)?, 15))
}

/// The day, year (Cisco ASA), time of day and length of a BSD stamp after
/// its month, with any number of spaces between its parts.
fn bsd_loose(b: &[u8]) -> Option<BsdParts> {
    let mut i = 3;
    let spaces = |i: &mut usize| {
        let n = b[*i..].iter().take_while(|&&c| c == b' ').count();
        *i += n;
        n > 0
    };
    if !spaces(&mut i) {
        return None;
    }
    let d = b[i..]
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=2).contains(&d) {
        return None;
    }
    let day = number(&b[i..i + d])? as u8;
    i += d;
    if !spaces(&mut i) {
        return None;
    }
    // A year (Cisco ASA) is four digits and a space; a time has a colon
    // after two.
    let mut year = None;
    if b.len() >= i + 5 && b[i..i + 4].iter().all(u8::is_ascii_digit) && b[i + 4] == b' ' {
        year = Some(number(&b[i..i + 4])? as u16);
        i += 5;
    }
    let clock = clock(b.get(i..)?.first_chunk::<8>()?)?;
    Some((day, year, clock, i + 8))
}

/// An RFC 3339 stamp at the start of `b` (`2026-11-27T23:42:18.123+01:00`)
/// and its length.
fn rfc3339(b: &[u8]) -> Option<(Stamp<'_>, usize)> {
    // The date and time are at fixed places: read there, each pair of
    // digits at once, rather than cut into slices that are checked and
    // folded (which took half of the parse of an RFC 5424 header).
    let h = b.first_chunk::<19>()?;
    if h[4] != b'-' || h[7] != b'-' || !matches!(h[10], b'T' | b't') {
        return None;
    }
    let year = u16::from(two_digits(h[0], h[1])?) * 100 + u16::from(two_digits(h[2], h[3])?);
    let month = two_digits(h[5], h[6])?;
    let day = two_digits(h[8], h[9])?;
    let (hour, minute, second) = clock(h[11..].first_chunk::<8>()?)?;
    let mut i = 19;
    let fraction = fraction(&b[i..]);
    if !fraction.is_empty() {
        i += 1 + fraction.len();
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let z = b.get(i + 1..)?.first_chunk::<5>()?;
            if z[2] != b':' {
                return None;
            }
            let (h, m) = (two_digits(z[0], z[1])?, two_digits(z[3], z[4])?);
            if h > 23 || m > 59 {
                return None;
            }
            i += 6;
            let minutes = i16::from(h) * 60 + i16::from(m);
            if sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let stamp = Stamp {
        year: Some(year),
        month,
        day,
        hour,
        minute,
        second,
        fraction,
        offset_minutes: Some(offset_minutes),
    };
    valid(&stamp).then_some((stamp, i))
}

/// `hh:mm:ss`.
fn clock(b: &[u8; 8]) -> Option<(u8, u8, u8)> {
    if b[2] != b':' || b[5] != b':' {
        return None;
    }
    Some((
        two_digits(b[0], b[1])?,
        two_digits(b[3], b[4])?,
        two_digits(b[6], b[7])?,
    ))
}

/// The value of two ASCII digits.
#[inline(always)]
fn two_digits(tens: u8, ones: u8) -> Option<u8> {
    let (t, o) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
    // Computed only for digits: `then_some` would compute it for any
    // byte, which overflows.
    (t < 10 && o < 10).then(|| t * 10 + o)
}

/// The digits after a `.` at the start of `b` (one to nine), or nothing.
fn fraction(b: &[u8]) -> &[u8] {
    match b.strip_prefix(b".") {
        Some(digits) => {
            let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
            if (1..=9).contains(&n) {
                &digits[..n]
            } else {
                &[]
            }
        }
        None => &[],
    }
}

/// A date and time that exist (a leap second does not: RFC 5424 forbids
/// it, and a stamp with one is kept as sent without a `Time`).
fn valid(s: &Stamp<'_>) -> bool {
    // Without a year, 29 February may be valid.
    let days = days_in_month(s.year.map_or(2000, i64::from), s.month);
    (1..=12).contains(&s.month)
        && (1..=days).contains(&s.day)
        && s.hour < 24
        && s.minute < 60
        && s.second < 60
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A month's English abbreviation, in any case (`Nov`, `NOV`).
fn month(b: &[u8]) -> Option<u8> {
    // The three letters as one lower-case number, compared with each
    // name's at once rather than letter by letter.
    const fn key(n: &[u8; 3]) -> u32 {
        u32::from_le_bytes([n[0], n[1], n[2], 0])
    }
    const NAMES: [u32; 12] = {
        let names = *b"janfebmaraprmayjunjulaugsepoctnovdec";
        let mut keys = [0; 12];
        let mut i = 0;
        while i < 12 {
            keys[i] = key(&[names[3 * i], names[3 * i + 1], names[3 * i + 2]]);
            i += 1;
        }
        keys
    };
    let k = key(b.first_chunk::<3>()?) | 0x0020_2020;
    NAMES.iter().position(|&n| n == k).map(|i| i as u8 + 1)
}

/// A number of ASCII digits (at most four).
fn number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// The first space-delimited word of `b` and what follows it (from the
/// space on).
fn word(b: &[u8]) -> (&[u8], &[u8]) {
    b.split_at(find_any(b, 0, [b' ']))
}

/// An RFC 3164 TAG with its colon: `app:` or `app[pid]:`, where the name
/// is what programs are called (letters, digits, `-_./@`, at most 48
/// bytes, RFC 5424's APP-NAME limit). Returns the name and the PID.
fn tag(word: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let body = word.strip_suffix(b":")?;
    let (name, pid) = match body.strip_suffix(b"]") {
        Some(b) => {
            let open = b.iter().position(|&c| c == b'[')?;
            let pid = &b[open + 1..];
            if pid.is_empty() || pid.contains(&b'[') {
                return None;
            }
            (&b[..open], Some(pid))
        }
        None => (body, None),
    };
    // One table lookup a byte.
    static NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'@');
            c += 1;
        }
        t
    };
    let ok = |c: &u8| NAME[usize::from(*c)];
    (!name.is_empty() && name.len() <= 48 && name.iter().all(ok)).then_some((name, pid))
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ').count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rev()
        .take_while(|&&c| matches!(c, b'\n' | b'\r' | b'\0'))
        .count();
    &b[..b.len() - n]
}

/// The length of well-formed structured data at the start of `b`: one or
/// more `[SD-ID *(SP PARAM-NAME="value")]`. Loose where senders are (any
/// byte but the delimiters in names, anything escaped in values), strict
/// about the delimiters, so [`sd_params`] can walk it without checks.
/// Keeps the parameters it finds in `list` (valid when it answers).
fn sd_len<'a>(b: &'a [u8], list: &mut SdList<'a>) -> Option<usize> {
    list.clear();
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        let id_start = i;
        i += sd_name(&b[i..])?;
        let id = &b[id_start..i];
        let mut params = 0;
        loop {
            match b.get(i)? {
                b']' => {
                    i += 1;
                    break;
                }
                b' ' => {
                    i += 1;
                    let name_start = i;
                    i += sd_name(&b[i..])?;
                    let name = &b[name_start..i];
                    if b.get(i..i + 2)? != b"=\"" {
                        return None;
                    }
                    i += 2;
                    let value_start = i;
                    loop {
                        i = find_any(b, i, [b'"', b'\\']);
                        match b.get(i)? {
                            b'\\' => i += 2,
                            _ => break,
                        }
                    }
                    list.push(SdParam {
                        id,
                        param: Some((name, &b[value_start..i])),
                    });
                    params += 1;
                    i += 1;
                }
                _ => return None,
            }
        }
        if params == 0 {
            list.push(SdParam { id, param: None });
        }
    }
    (i > 0).then_some(i)
}

/// The parameters of structured data as [`parse_into`] found them, in
/// order ([`sd_params`]'s answer), when there are at most
/// [`SdList::CAP`]: the encoder then reads them without walking the
/// structured data again. Kept on the stack, its slots not written until
/// used.
pub struct SdList<'a> {
    params: arrayvec::ArrayVec<SdParam<'a>, { SdList::CAP }>,
    /// All the parameters fitted.
    complete: bool,
}

impl<'a> SdList<'a> {
    pub const CAP: usize = 16;

    pub fn new() -> Self {
        Self {
            params: arrayvec::ArrayVec::new(),
            complete: false,
        }
    }

    fn clear(&mut self) {
        self.params.clear();
        self.complete = true;
    }

    fn push(&mut self, p: SdParam<'a>) {
        if self.params.try_push(p).is_err() {
            self.complete = false;
        }
    }

    /// Every parameter, if they all fitted.
    pub fn params(&self) -> Option<&[SdParam<'a>]> {
        self.complete.then_some(&self.params[..])
    }
}

impl Default for SdList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// An SD-ID or PARAM-NAME's length (1 to 32 bytes, none of ` =]"`).
#[inline]
fn sd_name(b: &[u8]) -> Option<usize> {
    let n = find_any(&b[..b.len().min(33)], 0, [b' ', b'=', b']', b'"']);
    (1..=32).contains(&n).then_some(n)
}

/// One parameter of an SD element, or an element without parameters
/// (`param` `None`): its SD-ID, name and value (still escaped: see
/// [`sd_unescape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdParam<'a> {
    pub id: &'a [u8],
    pub param: Option<(&'a [u8], &'a [u8])>,
}

/// Every parameter of structured data that [`sd_len`] accepted, in order.
pub fn sd_params(sd: &[u8]) -> Vec<SdParam<'_>> {
    SdParams::new(sd).collect()
}

/// [`sd_params`] one at a time, so a caller can keep them where it likes
/// (the encoder keeps a few on the stack).
pub struct SdParams<'a> {
    sd: &'a [u8],
    i: usize,
    /// The SD-ID of the element whose parameters are being read, if one
    /// is open (`i` is then at the space before its next parameter).
    open: Option<&'a [u8]>,
}

impl<'a> SdParams<'a> {
    /// Structured data that [`sd_len`] accepted.
    pub fn new(sd: &'a [u8]) -> Self {
        Self {
            sd,
            i: 0,
            open: None,
        }
    }
}

impl<'a> Iterator for SdParams<'a> {
    type Item = SdParam<'a>;

    // Inlined: a parameter returned through memory and read back at once
    // waits on the stores that wrote it.
    #[inline]
    fn next(&mut self) -> Option<SdParam<'a>> {
        let sd = self.sd;
        let id = match self.open {
            Some(id) => id,
            None => {
                if self.i >= sd.len() {
                    return None;
                }
                // `[` SD-ID
                self.i += 1;
                let n = sd_name(&sd[self.i..]).unwrap_or(0);
                let id = &sd[self.i..self.i + n];
                self.i += n;
                if sd[self.i] != b' ' {
                    // `]`: an element without parameters.
                    self.i += 1;
                    return Some(SdParam { id, param: None });
                }
                id
            }
        };
        // ` ` PARAM-NAME `="` value `"`
        let mut i = self.i + 1;
        let n = sd_name(&sd[i..]).unwrap_or(0);
        let name = &sd[i..i + n];
        i += n + 2;
        let start = i;
        loop {
            i = find_any(sd, i, [b'"', b'\\']);
            if sd[i] == b'"' {
                break;
            }
            i += 2;
        }
        let value = &sd[start..i];
        i += 1;
        if sd[i] == b' ' {
            self.open = Some(id);
        } else {
            // `]`
            self.open = None;
            i += 1;
        }
        self.i = i;
        Some(SdParam {
            id,
            param: Some((name, value)),
        })
    }
}

/// A PARAM-VALUE with its escapes (`\"`, `\\`, `\]`) undone; any other
/// backslash is a backslash (RFC 5424, 6.3.3).
pub fn sd_unescape(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !value.contains(&b'\\') {
        return value.into();
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\\' && matches!(value.get(i + 1), Some(b'"' | b'\\' | b']')) {
            i += 1;
        }
        out.push(value[i]);
        i += 1;
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp's parts: year, month, day, hour, minute, second, fraction,
    /// offset.
    type Parts<'a> = (Option<u16>, u8, u8, u8, u8, u8, &'a str, Option<i16>);

    /// What a test expects of a parse: `None` for a field that must be
    /// absent.
    #[derive(Default)]
    struct Want<'a> {
        pri: Option<u8>,
        timestamp: Option<&'a str>,
        stamp: Option<Parts<'a>>,
        hostname: Option<&'a str>,
        app_name: Option<&'a str>,
        proc_id: Option<&'a str>,
        msg_id: Option<&'a str>,
        sd: Option<&'a str>,
        message: &'a str,
    }

    fn check(line: &[u8], want: Want<'_>) {
        let m = parse(line);
        let s = |o: Option<&[u8]>| o.map(|b| String::from_utf8_lossy(b).into_owned());
        let w = |o: Option<&str>| o.map(str::to_owned);
        let ctx = String::from_utf8_lossy(line);
        assert_eq!(m.pri, want.pri, "pri of {ctx}");
        assert_eq!(s(m.timestamp), w(want.timestamp), "timestamp of {ctx}");
        let stamp = m.stamp.map(|t| {
            (
                t.year,
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second,
                String::from_utf8_lossy(t.fraction).into_owned(),
                t.offset_minutes,
            )
        });
        let want_stamp = want
            .stamp
            .map(|(y, mo, d, h, mi, s, f, o)| (y, mo, d, h, mi, s, f.to_owned(), o));
        assert_eq!(stamp, want_stamp, "stamp of {ctx}");
        assert_eq!(s(m.hostname), w(want.hostname), "hostname of {ctx}");
        assert_eq!(s(m.app_name), w(want.app_name), "app name of {ctx}");
        assert_eq!(s(m.proc_id), w(want.proc_id), "proc id of {ctx}");
        assert_eq!(s(m.msg_id), w(want.msg_id), "msg id of {ctx}");
        assert_eq!(s(m.structured_data), w(want.sd), "structured data of {ctx}");
        assert_eq!(
            String::from_utf8_lossy(m.message),
            want.message,
            "message of {ctx}"
        );
    }

    #[test]
    fn rfc5424_examples() {
        // RFC 5424 6.5, example 1 (with its BOM).
        check(
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8",
            Want {
                pri: Some(34),
                timestamp: Some("2003-10-11T22:14:15.003Z"),
                stamp: Some((Some(2003), 10, 11, 22, 14, 15, "003", Some(0))),
                hostname: Some("mymachine.example.com"),
                app_name: Some("su"),
                msg_id: Some("ID47"),
                message: "'su root' failed for lonvick on /dev/pts/8",
                ..Want::default()
            },
        );
        // Example 2: microseconds, an offset, no MSGID.
        check(
            b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
            Want {
                pri: Some(165),
                timestamp: Some("2003-08-24T05:14:15.000003-07:00"),
                stamp: Some((Some(2003), 8, 24, 5, 14, 15, "000003", Some(-420))),
                hostname: Some("192.0.2.1"),
                app_name: Some("myproc"),
                proc_id: Some("8710"),
                message: "%% It's time to make the do-nuts.",
                ..Want::default()
            },
        );
        // Examples 3 and 4: structured data, then none or no message.
        let sd = r#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]"#;
        check(
            format!("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 {sd} \u{feff}An application event log entry...").as_bytes(),
            Want {
                pri: Some(165),
                timestamp: Some("2003-10-11T22:14:15.003Z"),
                stamp: Some((Some(2003), 10, 11, 22, 14, 15, "003", Some(0))),
                hostname: Some("mymachine.example.com"),
                app_name: Some("evntslog"),
                msg_id: Some("ID47"),
                sd: Some(sd),
                message: "An application event log entry...",
                ..Want::default()
            },
        );
        let two = format!("{sd}[examplePriority@32473 class=\"high\"]");
        check(
            format!("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 {two}")
                .as_bytes(),
            Want {
                pri: Some(165),
                timestamp: Some("2003-10-11T22:14:15.003Z"),
                stamp: Some((Some(2003), 10, 11, 22, 14, 15, "003", Some(0))),
                hostname: Some("mymachine.example.com"),
                app_name: Some("evntslog"),
                msg_id: Some("ID47"),
                sd: Some(&two),
                message: "",
                ..Want::default()
            },
        );
    }

    #[test]
    fn rfc3164_examples() {
        // RFC 3164 5.4, examples 1 and 2.
        check(
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
            Want {
                pri: Some(34),
                timestamp: Some("Oct 11 22:14:15"),
                stamp: Some((None, 10, 11, 22, 14, 15, "", None)),
                hostname: Some("mymachine"),
                app_name: Some("su"),
                message: "'su root' failed for lonvick on /dev/pts/8",
                ..Want::default()
            },
        );
        check(
            b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
            Want {
                pri: Some(13),
                timestamp: Some("Feb  5 17:32:18"),
                stamp: Some((None, 2, 5, 17, 32, 18, "", None)),
                hostname: Some("10.0.0.99"),
                message: "Use the BFG!",
                ..Want::default()
            },
        );
        // Example 4: a relay's prefix before a stamp we cannot read; the
        // priority stays.
        check(
            b"<0>1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!",
            Want {
                pri: Some(0),
                message: "1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!",
                ..Want::default()
            },
        );
    }

    #[test]
    fn what_util_linux_logger_sends() {
        check(
            b"<131>1 2026-12-05T12:04:19.674241+00:00 vm myapp - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] disk full on /var",
            Want {
                pri: Some(131),
                timestamp: Some("2026-12-05T12:04:19.674241+00:00"),
                stamp: Some((Some(2026), 12, 5, 12, 4, 19, "674241", Some(0))),
                hostname: Some("vm"),
                app_name: Some("myapp"),
                sd: Some("[timeQuality tzKnown=\"1\" isSynced=\"0\"]"),
                message: "disk full on /var",
                ..Want::default()
            },
        );
        check(
            b"<13>Dec  5 12:04:19 vm myapp: hello 3164",
            Want {
                pri: Some(13),
                timestamp: Some("Dec  5 12:04:19"),
                stamp: Some((None, 12, 5, 12, 4, 19, "", None)),
                hostname: Some("vm"),
                app_name: Some("myapp"),
                message: "hello 3164",
                ..Want::default()
            },
        );
    }

    #[test]
    fn cisco_juniper_fortinet() {
        // Cisco IOS: sequence number, `*` (clock not in sync), msec, colon.
        check(
            b"<189>52: *Mar  1 18:46:11.123: %SYS-5-CONFIG_I: Configured from console by vty0 (10.0.0.1)",
            Want {
                pri: Some(189),
                timestamp: Some("*Mar  1 18:46:11.123"),
                stamp: Some((None, 3, 1, 18, 46, 11, "123", None)),
                message: "%SYS-5-CONFIG_I: Configured from console by vty0 (10.0.0.1)",
                ..Want::default()
            },
        );
        // Cisco IOS with its hostname first and a zone.
        check(
            b"<187>1043: router1: Nov 27 23:42:18 UTC: %LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up\n",
            Want {
                pri: Some(187),
                timestamp: Some("Nov 27 23:42:18 UTC"),
                stamp: Some((None, 11, 27, 23, 42, 18, "", Some(0))),
                hostname: Some("router1"),
                message: "%LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up",
                ..Want::default()
            },
        );
        // Cisco ASA: a year, a device id and " : ".
        check(
            b"<166>Nov 27 2026 23:42:18 asa01 : %ASA-6-302013: Built outbound TCP connection 123 for outside:198.51.100.7/443",
            Want {
                pri: Some(166),
                timestamp: Some("Nov 27 2026 23:42:18"),
                stamp: Some((Some(2026), 11, 27, 23, 42, 18, "", None)),
                hostname: Some("asa01"),
                message: "%ASA-6-302013: Built outbound TCP connection 123 for outside:198.51.100.7/443",
                ..Want::default()
            },
        );
        // Cisco ASA without a device id: the message id is no hostname.
        check(
            b"<163>Nov 27 2026 23:42:18: %ASA-3-710003: TCP access denied by ACL",
            Want {
                pri: Some(163),
                timestamp: Some("Nov 27 2026 23:42:18"),
                stamp: Some((Some(2026), 11, 27, 23, 42, 18, "", None)),
                message: "%ASA-3-710003: TCP access denied by ACL",
                ..Want::default()
            },
        );
        // Juniper, BSD style.
        check(
            b"<28>Nov 27 23:42:18 router1 mgd[1234]: UI_COMMIT: User 'admin' requested 'commit' operation",
            Want {
                pri: Some(28),
                timestamp: Some("Nov 27 23:42:18"),
                stamp: Some((None, 11, 27, 23, 42, 18, "", None)),
                hostname: Some("router1"),
                app_name: Some("mgd"),
                proc_id: Some("1234"),
                message: "UI_COMMIT: User 'admin' requested 'commit' operation",
                ..Want::default()
            },
        );
        // Juniper, structured (RFC 5424).
        let sd = r#"[junos@2636.1.1.1.2.40 peer-name="192.0.2.1" old-state="Established" new-state="Idle"]"#;
        check(
            format!("<165>1 2026-11-27T23:42:18.123+01:00 router1 rpd 1234 BGP_NEIGHBOR_STATE_CHANGED {sd} BGP peer 192.0.2.1 changed state").as_bytes(),
            Want {
                pri: Some(165),
                timestamp: Some("2026-11-27T23:42:18.123+01:00"),
                stamp: Some((Some(2026), 11, 27, 23, 42, 18, "123", Some(60))),
                hostname: Some("router1"),
                app_name: Some("rpd"),
                proc_id: Some("1234"),
                msg_id: Some("BGP_NEIGHBOR_STATE_CHANGED"),
                sd: Some(sd),
                message: "BGP peer 192.0.2.1 changed state",
            },
        );
        // Fortinet: key=value after the priority, no header.
        let forti = r#"date=2026-11-27 time=23:42:18 devname="FG100E" devid="FG100E3G16000000" logid="0000000013" type="traffic" subtype="forward" level="notice" srcip=10.0.0.5 dstip=198.51.100.7 action="accept""#;
        check(
            format!("<189>{forti}").as_bytes(),
            Want {
                pri: Some(189),
                message: forti,
                ..Want::default()
            },
        );
        // rsyslog's forwarding format: an RFC 3339 stamp in a BSD header.
        check(
            b"<13>2026-11-27T23:42:18.123456+00:00 web01 app[5]: hi",
            Want {
                pri: Some(13),
                timestamp: Some("2026-11-27T23:42:18.123456+00:00"),
                stamp: Some((Some(2026), 11, 27, 23, 42, 18, "123456", Some(0))),
                hostname: Some("web01"),
                app_name: Some("app"),
                proc_id: Some("5"),
                message: "hi",
                ..Want::default()
            },
        );
    }

    #[test]
    fn no_priority_empty_broken_and_long() {
        check(
            b"Nov 27 23:42:18 web01 app: no priority\n",
            Want {
                timestamp: Some("Nov 27 23:42:18"),
                stamp: Some((None, 11, 27, 23, 42, 18, "", None)),
                hostname: Some("web01"),
                app_name: Some("app"),
                message: "no priority",
                ..Want::default()
            },
        );
        check(
            b"no header at all",
            Want {
                message: "no header at all",
                ..Want::default()
            },
        );
        check(b"", Want::default());
        check(
            b"<13>",
            Want {
                pri: Some(13),
                ..Want::default()
            },
        );
        // Out of range, or not a priority at all: part of the message.
        for line in ["<192>x", "<1234>x", "<>x", "<13x", "<-1>x"] {
            check(
                line.as_bytes(),
                Want {
                    message: line,
                    ..Want::default()
                },
            );
        }
        // An RFC 5424 header cut short, or with broken structured data.
        for rest in [
            "1 ",
            "1 - host",
            "1 - host app - - [bad",
            "1 - h a - - [x y=\"1] m",
        ] {
            check(
                format!("<13>{rest}").as_bytes(),
                Want {
                    pri: Some(13),
                    message: rest,
                    ..Want::default()
                },
            );
        }
        // Dates that do not exist are no stamp.
        check(
            b"<13>Feb 30 12:00:00 host app: x",
            Want {
                pri: Some(13),
                message: "Feb 30 12:00:00 host app: x",
                ..Want::default()
            },
        );
        // Not UTF-8: the fields are the bytes, the message too.
        let m = parse(b"<13>Nov 27 23:42:18 web01 app: caf\xe9 \xff\r\n\0");
        assert_eq!(m.message, b"caf\xe9 \xff");
        assert_eq!(m.app_name, Some(&b"app"[..]));
        // A very long line: all of it is the message.
        let mut long = b"<13>Nov 27 23:42:18 web01 app: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 9000));
        assert_eq!(parse(&long).message.len(), 9000);
        assert_eq!(parse(&long).hostname, Some(&b"web01"[..]));
    }

    #[test]
    fn rfc5424_nil_fields_are_absent() {
        check(
            b"<14>1 - - - - - - just a message",
            Want {
                pri: Some(14),
                message: "just a message",
                ..Want::default()
            },
        );
        // A stamp that is not RFC 3339 is kept as sent, without a reading.
        check(
            b"<14>1 yesterday host app 1 m - x",
            Want {
                pri: Some(14),
                timestamp: Some("yesterday"),
                hostname: Some("host"),
                app_name: Some("app"),
                proc_id: Some("1"),
                msg_id: Some("m"),
                message: "x",
                ..Want::default()
            },
        );
    }

    #[test]
    fn structured_data_params_and_escapes() {
        let sd = br#"[a@1 x="1" x="2\"q\]" y="\\n"][a@1 z="3"][b@2]"#;
        let mut list = SdList::new();
        assert_eq!(sd_len(sd, &mut list), Some(sd.len()));
        let params = sd_params(sd);
        assert_eq!(list.params(), Some(&params[..]));
        let pairs: Vec<(String, Option<(String, String)>)> = params
            .iter()
            .map(|p| {
                let t = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (t(p.id), p.param.map(|(n, v)| (t(n), t(&sd_unescape(v)))))
            })
            .collect();
        let want = |id: &str, p: Option<(&str, &str)>| {
            (id.to_owned(), p.map(|(n, v)| (n.to_owned(), v.to_owned())))
        };
        assert_eq!(
            pairs,
            [
                want("a@1", Some(("x", "1"))),
                want("a@1", Some(("x", "2\"q]"))),
                want("a@1", Some(("y", "\\n"))),
                want("a@1", Some(("z", "3"))),
                want("b@2", None),
            ]
        );
        for bad in [
            &b"[]"[..],
            b"[a",
            b"[a x=1]",
            b"[a x=\"1]",
            b"[a  x=\"1\"]",
            b"x",
        ] {
            assert_eq!(
                sd_len(bad, &mut SdList::new()),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn year_of_a_stamp_without_one() {
        let stamp = |month| Stamp {
            year: None,
            month,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            fraction: b"",
            offset_minutes: None,
        };
        // December's line read in January is last year's, and the other way.
        assert_eq!(stamp(12).resolve_year(2027, 1), 2026);
        assert_eq!(stamp(1).resolve_year(2026, 12), 2027);
        assert_eq!(stamp(7).resolve_year(2026, 1), 2026);
        let mut with = stamp(12);
        with.year = Some(2020);
        assert_eq!(with.resolve_year(2027, 1), 2020);
    }
}
