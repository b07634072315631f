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
    escape::{push_escaped, push_escaped_twice},
    syslog::{self, Stamp},
};

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
    pub(super) added: usize,
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

    /// Escaped text whose escaping added `added` bytes (use [`lit!`] for
    /// literals).
    pub fn lit(&mut self, escaped: &str, added: usize) {
        self.text.push_str(escaped);
        self.added += added;
    }

    /// A JSON string value: `s` quoted and escaped, then escaped again.
    pub fn string(&mut self, s: &str) {
        self.text.push_str("\\\"");
        self.added += 2 + push_escaped_twice(&mut self.text, s);
        self.text.push_str("\\\"");
    }

    /// [`string`](Self::string) of bytes that may not be UTF-8 (a syslog
    /// field): invalid sequences become U+FFFD (the bytes are kept in
    /// `Text`/`Payload` beside it).
    pub fn string_lossy(&mut self, b: &[u8]) {
        match std::str::from_utf8(b) {
            Ok(s) => self.string(s),
            Err(_) => self.string(&String::from_utf8_lossy(b)),
        }
    }

    /// JSON text written as it is (already a JSON value), escaped once.
    pub fn json(&mut self, json: &str) {
        let before = self.text.len();
        push_escaped(&mut self.text, json);
        self.added += self.text.len() - before - json.len();
    }

    /// Bytes of the text the JSON would have (what AWS counts).
    pub fn json_len(&self) -> usize {
        self.text.len() - self.added
    }

    pub fn finish(self) -> Detail {
        Detail {
            json_len: self.text.len() - self.added,
            escaped: self.text,
        }
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
            lit!(w, r#",\"Syslog\":"#);
            write_syslog(w, &syslog::parse(payload), received);
            match std::str::from_utf8(payload) {
                Ok(text) => {
                    lit!(w, r#",\"Text\":"#);
                    w.string(text);
                }
                Err(_) => write_base64(w, payload),
            }
            return Format::Syslog;
        }
    }
    write_base64(w, payload);
    Format::Base64
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
/// scalar, surrounding whitespace allowed). Checked by serde_json without
/// building the value; the text itself goes into the Detail, so the value
/// is exactly the one sent (numbers keep all their digits).
fn as_json(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    serde_json::from_str::<IgnoredAny>(text).ok()?;
    Some(text)
}

/// The `Syslog` object. Absent fields are left out (a rule's `exists`
/// tells them apart); `Message` is always there.
fn write_syslog(w: &mut DetailWriter, m: &syslog::Message<'_>, received: SystemTime) {
    let mut num = itoa::Buffer::new();
    lit!(w, r#"{"#);
    if let (Some(facility), Some(severity)) = (m.facility(), m.severity()) {
        lit!(w, r#"\"Facility\":"#);
        w.plain(num.format(facility));
        lit!(w, r#",\"Severity\":"#);
        w.plain(num.format(severity));
        lit!(w, r#","#);
    }
    if let Some(ts) = m.timestamp {
        lit!(w, r#"\"Timestamp\":"#);
        w.string_lossy(ts);
        lit!(w, r#","#);
    }
    if let Some(stamp) = &m.stamp {
        lit!(w, r#"\"Time\":\""#);
        push_iso8601(&mut w.text, stamp, received);
        lit!(w, r#"\","#);
    }
    for (key, value) in [
        (r#"\"Hostname\":"#, m.hostname),
        (r#"\"AppName\":"#, m.app_name),
        (r#"\"ProcId\":"#, m.proc_id),
        (r#"\"MsgId\":"#, m.msg_id),
    ] {
        if let Some(v) = value {
            // Every key above has two escaped quotes.
            w.lit(key, 2);
            w.string_lossy(v);
            lit!(w, r#","#);
        }
    }
    if let Some(sd) = m.structured_data {
        lit!(w, r#"\"StructuredData\":"#);
        write_structured_data(w, sd);
        lit!(w, r#","#);
    }
    lit!(w, r#"\"Message\":"#);
    w.string_lossy(m.message);
    lit!(w, r#"}"#);
}

/// `{"SD-ID":{"name":"value",…},…}`. A name repeated within an element
/// (RFC 5424 allows it) becomes an array of its values, and an SD-ID
/// repeated in a message is merged, so the object has no duplicate keys.
fn write_structured_data(w: &mut DetailWriter, sd: &[u8]) {
    let mut params = syslog::sd_params(sd);
    // Written in groups of one SD-ID, then one name. Usually they come so
    // (each SD-ID once, each name once in it), checked pairwise for a
    // few; otherwise a stable sort groups them, keeping values in order.
    fn name<'a>(p: &syslog::SdParam<'a>) -> Option<&'a [u8]> {
        p.param.map(|p| p.0)
    }
    let grouped = params.len() <= 16
        && (1..params.len()).all(|i| {
            (0..i).all(|k| {
                params[k].id != params[i].id
                    || (params[i - 1].id == params[i].id && name(&params[k]) != name(&params[i]))
            })
        });
    if !grouped {
        params.sort_by(|a, b| (a.id, name(a)).cmp(&(b.id, name(b))));
    }
    lit!(w, r#"{"#);
    let mut i = 0;
    while i < params.len() {
        let id = params[i].id;
        if i > 0 {
            lit!(w, r#","#);
        }
        w.string_lossy(id);
        lit!(w, r#":{"#);
        let mut first = true;
        while i < params.len() && params[i].id == id {
            let Some((name, _)) = params[i].param else {
                i += 1;
                continue;
            };
            let values: Vec<&[u8]> = params[i..]
                .iter()
                .take_while(|p| p.id == id && p.param.map(|p| p.0) == Some(name))
                .filter_map(|p| p.param.map(|p| p.1))
                .collect();
            i += values.len();
            if !first {
                lit!(w, r#","#);
            }
            first = false;
            w.string_lossy(name);
            lit!(w, r#":"#);
            if let [value] = values[..] {
                w.string_lossy(&syslog::sd_unescape(value));
            } else {
                lit!(w, r#"["#);
                for (k, value) in values.iter().enumerate() {
                    if k > 0 {
                        lit!(w, r#","#);
                    }
                    w.string_lossy(&syslog::sd_unescape(value));
                }
                lit!(w, r#"]"#);
            }
        }
        lit!(w, r#"}"#);
    }
    lit!(w, r#"}"#);
}

/// The stamp as ISO 8601: in UTC (`…Z`) when it named its zone, as the
/// sender's local time (no offset) when it did not; the fraction as sent.
/// A stamp without a year gets the one closest to `received`.
fn push_iso8601(out: &mut String, s: &Stamp<'_>, received: SystemTime) {
    let year = match s.year {
        Some(y) => i64::from(y),
        None => {
            let secs = received
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let (ry, rm, _) = syslog::civil_from_days(secs.div_euclid(86_400));
            s.resolve_year(ry, rm)
        }
    };
    let (mut y, mut mo, mut d, mut h, mut mi) = (year, s.month, s.day, s.hour, s.minute);
    if let Some(offset) = s.offset_minutes {
        let minutes = (syslog::days_from_civil(year, s.month, s.day) * 24 + i64::from(s.hour)) * 60
            + i64::from(s.minute)
            - i64::from(offset);
        (y, mo, d) = syslog::civil_from_days(minutes.div_euclid(1440));
        let of_day = minutes.rem_euclid(1440);
        (h, mi) = ((of_day / 60) as u8, (of_day % 60) as u8);
    }
    let two = |out: &mut String, n: u8| {
        out.push(char::from(b'0' + n / 10));
        out.push(char::from(b'0' + n % 10));
    };
    if (0..=9999).contains(&y) {
        let y = y as u16;
        two(out, (y / 100) as u8);
        two(out, (y % 100) as u8);
    } else {
        out.push_str(itoa::Buffer::new().format(y));
    }
    out.push('-');
    two(out, mo);
    out.push('-');
    two(out, d);
    out.push('T');
    two(out, h);
    out.push(':');
    two(out, mi);
    out.push(':');
    two(out, s.second);
    if !s.fraction.is_empty() {
        out.push('.');
        // ASCII digits (checked by the parser).
        out.push_str(std::str::from_utf8(s.fraction).unwrap_or_default());
    }
    if s.offset_minutes.is_some() {
        out.push('Z');
    }
}
