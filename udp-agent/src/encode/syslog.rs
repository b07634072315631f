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
//! - `<PRI>` (0-191) at the start; without one, no facility or severity.
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
    let Some((pri, rest)) = priority(payload) else {
        return Message {
            message: trim_end(payload),
            ..Message::default()
        };
    };
    if let Some(m) = rfc5424(pri, rest).or_else(|| rfc3164(pri, rest)) {
        return m;
    }
    Message {
        pri: Some(pri),
        message: trim_end(rest),
        ..Message::default()
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

fn rfc5424(pri: u8, rest: &[u8]) -> Option<Message<'_>> {
    // VERSION: a non-zero number of at most two digits ("1" today).
    let digits = rest
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=2).contains(&digits) || rest[0] == b'0' || rest.get(digits) != Some(&b' ') {
        return None;
    }
    let mut r = &rest[digits + 1..];
    let mut field = || {
        let end = r.iter().position(|&c| c == b' ')?;
        let f = &r[..end];
        r = &r[end + 1..];
        (!f.is_empty()).then_some(f)
    };
    let timestamp = field()?;
    let hostname = field()?;
    let app_name = field()?;
    let proc_id = field()?;
    let msg_id = field()?;
    let (structured_data, after) = match r.first() {
        Some(b'-') => (None, &r[1..]),
        Some(b'[') => {
            let n = sd_len(r)?;
            (Some(&r[..n]), &r[n..])
        }
        _ => return None,
    };
    let message = match after {
        [] => after,
        [b' ', msg @ ..] => msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg),
        _ => return None,
    };
    Some(Message {
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
    })
}

/// RFC 5424's NILVALUE.
fn nil(field: &[u8]) -> Option<&[u8]> {
    (field != b"-").then_some(field)
}

fn rfc3164(pri: u8, rest: &[u8]) -> Option<Message<'_>> {
    let (hostname, timestamp, stamp, after) = header_3164(rest)?;
    let mut m = Message {
        pri: Some(pri),
        timestamp: Some(timestamp),
        stamp: Some(stamp),
        hostname,
        ..Message::default()
    };
    let mut r = trim_start(after);
    if m.hostname.is_none() {
        let (word, tail) = word(r);
        if let Some((app, pid)) = tag(word) {
            m.app_name = Some(app);
            m.proc_id = pid;
            m.message = trim_end(tail.strip_prefix(b" ").unwrap_or(tail));
            return Some(m);
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
    Some(m)
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
    for start in [Some(rest), after_seq].into_iter().flatten() {
        if let Some((ts, stamp, after)) = stamp_3164(start) {
            return Some((None, ts, stamp, after));
        }
        let (host, tail) = word(start);
        if let Some(host) = host.strip_suffix(b":").filter(|h| !h.is_empty())
            && let Some(tail) = tail.strip_prefix(b" ")
            && let Some((ts, stamp, after)) = stamp_3164(tail)
        {
            return Some((Some(host), ts, stamp, after));
        }
    }
    None
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
    let (hour, minute, second) = clock(b.get(i..i + 8)?)?;
    i += 8;
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

/// An RFC 3339 stamp at the start of `b` (`2026-11-27T23:42:18.123+01:00`)
/// and its length.
fn rfc3339(b: &[u8]) -> Option<(Stamp<'_>, usize)> {
    let head = b.get(..19)?;
    if head[4] != b'-' || head[7] != b'-' || !matches!(head[10], b'T' | b't') {
        return None;
    }
    let year = number(&head[..4])? as u16;
    let month = number(&head[5..7])? as u8;
    let day = number(&head[8..10])? as u8;
    let (hour, minute, second) = clock(&head[11..19])?;
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
            let z = b.get(i + 1..i + 6)?;
            if z[2] != b':' {
                return None;
            }
            let (h, m) = (number(&z[..2])?, number(&z[3..5])?);
            if h > 23 || m > 59 {
                return None;
            }
            i += 6;
            let minutes = (h * 60 + m) as i16;
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
fn clock(b: &[u8]) -> Option<(u8, u8, u8)> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    Some((
        number(&b[..2])? as u8,
        number(&b[3..5])? as u8,
        number(&b[6..8])? as u8,
    ))
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

fn month(b: &[u8]) -> Option<u8> {
    const NAMES: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let lower = [
        b[0].to_ascii_lowercase(),
        b[1].to_ascii_lowercase(),
        b[2].to_ascii_lowercase(),
    ];
    NAMES.iter().position(|n| **n == lower).map(|i| i as u8 + 1)
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
    let end = b.iter().position(|&c| c == b' ').unwrap_or(b.len());
    b.split_at(end)
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
    let ok = |c: &u8| c.is_ascii_alphanumeric() || b"-_./@".contains(c);
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
fn sd_len(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        i += sd_name(&b[i..])?;
        loop {
            match b.get(i)? {
                b']' => {
                    i += 1;
                    break;
                }
                b' ' => {
                    i += 1;
                    i += sd_name(&b[i..])?;
                    if b.get(i..i + 2)? != b"=\"" {
                        return None;
                    }
                    i += 2;
                    loop {
                        match b.get(i)? {
                            b'\\' => i += 2,
                            b'"' => break,
                            _ => i += 1,
                        }
                    }
                    i += 1;
                }
                _ => return None,
            }
        }
    }
    (i > 0).then_some(i)
}

/// An SD-ID or PARAM-NAME's length (1 to 32 bytes, none of ` =]"`).
fn sd_name(b: &[u8]) -> Option<usize> {
    let n = b
        .iter()
        .take(33)
        .take_while(|c| !matches!(c, b' ' | b'=' | b']' | b'"'))
        .count();
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
    let mut out = Vec::new();
    let mut i = 0;
    while i < sd.len() {
        // `[` SD-ID
        i += 1;
        let n = sd_name(&sd[i..]).unwrap_or(0);
        let id = &sd[i..i + n];
        i += n;
        let mut any = false;
        while sd[i] == b' ' {
            i += 1;
            let n = sd_name(&sd[i..]).unwrap_or(0);
            let name = &sd[i..i + n];
            // `="`
            i += n + 2;
            let start = i;
            while sd[i] != b'"' {
                i += if sd[i] == b'\\' { 2 } else { 1 };
            }
            out.push(SdParam {
                id,
                param: Some((name, &sd[start..i])),
            });
            any = true;
            i += 1;
        }
        if !any {
            out.push(SdParam { id, param: None });
        }
        // `]`
        i += 1;
    }
    out
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

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (the inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
