//! Events as the stdout sink prints them: one line, one PutEvents request
//! entry, parsed the way a user reads it (the `Detail` string decoded, the
//! payload base64-decoded), and compared field by field with what a test
//! expects.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::Value;

/// One stdout line of `udp-agent run`: a PutEvents request entry, with its
/// `Detail` decoded.
#[derive(Clone, Debug)]
pub struct Event {
    pub source: String,
    pub detail_type: String,
    pub time: String,
    pub event_bus_name: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub src_addr: String,
    pub src_port: u16,
    /// `Payload`, base64-decoded.
    pub payload: Vec<u8>,
    pub length: u64,
    pub truncated: bool,
    pub interface: String,
    pub ip_version: u64,
    /// `Format`: the representation the event holds.
    pub format: String,
    /// The whole `Detail`, parsed (a packed event's `Packets` are here;
    /// its per-datagram fields above are empty).
    pub detail: Value,
    /// The line as printed.
    pub line: String,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(k)
            .ok_or_else(|| format!("no `{}`", path.join(".")))?;
    }
    Ok(cur)
}

fn str_field(v: &Value, path: &[&str]) -> Result<String, String> {
    field(v, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` is not a string", path.join(".")))
}

fn u64_field(v: &Value, path: &[&str]) -> Result<u64, String> {
    field(v, path)?
        .as_u64()
        .ok_or_else(|| format!("`{}` is not a non-negative JSON number", path.join(".")))
}

/// The payload bytes an event (or one element of a packed event's
/// `Packets`) carries, from whichever representation it holds: `Payload`
/// (base64), `Text`, `Hex`, or `Json` (its value, written out again).
pub fn payload_of(d: &Value) -> Result<Vec<u8>, String> {
    if let Some(p) = d.get("Payload") {
        let b64 = p.as_str().ok_or("`Payload` is not a string")?;
        return STANDARD
            .decode(b64)
            .map_err(|e| format!("Payload is not standard base64: {e}"));
    }
    if let Some(t) = d.get("Text") {
        let t = t.as_str().ok_or("`Text` is not a string")?;
        return Ok(t.as_bytes().to_vec());
    }
    if let Some(h) = d.get("Hex") {
        let h = h.as_str().ok_or("`Hex` is not a string")?;
        if h.len() % 2 != 0 || h.bytes().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("`Hex` {h:?} is not lowercase hex"));
        }
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    if let Some(j) = d.get("Json") {
        return Ok(j.to_string().into_bytes());
    }
    Err("no `Payload`, `Text`, `Hex` or `Json`".into())
}

fn port_field(v: &Value, path: &[&str]) -> Result<u16, String> {
    let n = u64_field(v, path)?;
    u16::try_from(n).map_err(|_| format!("`{}` = {n} is not a port", path.join(".")))
}

impl Event {
    /// Parses one stdout line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Event, String> {
        let err = |e: String| format!("{e} in line {line}");
        let top: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let detail_text = str_field(&top, &["Detail"]).map_err(err)?;
        let d: Value = serde_json::from_str(&detail_text)
            .map_err(|e| err(format!("Detail is not JSON: {e}")))?;
        let packed = d.get("Packets").is_some();
        let mut ev = Event {
            source: str_field(&top, &["Source"]).map_err(err)?,
            detail_type: str_field(&top, &["DetailType"]).map_err(err)?,
            time: str_field(&top, &["Time"]).map_err(err)?,
            event_bus_name: str_field(&top, &["EventBusName"]).map_err(err)?,
            dst_addr: str_field(&d, &["Destination", "Address"]).map_err(err)?,
            dst_port: port_field(&d, &["Destination", "Port"]).map_err(err)?,
            src_addr: String::new(),
            src_port: 0,
            payload: Vec::new(),
            length: 0,
            truncated: false,
            interface: str_field(&d, &["Interface"]).map_err(err)?,
            ip_version: u64_field(&d, &["IpVersion"]).map_err(err)?,
            format: str_field(&d, &["Format"]).map_err(err)?,
            detail: Value::Null,
            line: line.to_string(),
        };
        if !packed {
            ev.src_addr = str_field(&d, &["Source", "Address"]).map_err(err)?;
            ev.src_port = port_field(&d, &["Source", "Port"]).map_err(err)?;
            ev.payload = payload_of(&d).map_err(err)?;
            ev.length = u64_field(&d, &["Length"]).map_err(err)?;
            ev.truncated = field(&d, &["Truncated"])
                .map_err(err)?
                .as_bool()
                .ok_or_else(|| err("`Truncated` is not a boolean".into()))?;
        }
        ev.detail = d;
        Ok(ev)
    }

    /// The payload as text, lossily (for messages and markers).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Panics unless the envelope is the default one (`udp.raw`,
    /// `UdpPacket`, bus `default`) and `Time` is an RFC 3339 time within a
    /// few minutes of now.
    pub fn assert_default_envelope(&self) {
        assert_eq!(self.source, "udp.raw", "Source of {}", self.line);
        assert_eq!(self.detail_type, "UdpPacket", "DetailType of {}", self.line);
        assert_eq!(
            self.event_bus_name, "default",
            "EventBusName of {}",
            self.line
        );
        let t = humantime::parse_rfc3339(&self.time).unwrap_or_else(|e| {
            panic!("Time {:?} is not RFC 3339 ({e}): {}", self.time, self.line)
        });
        let now = SystemTime::now();
        let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(300),
            "Time {} is {skew:?} away from now: {}",
            self.time,
            self.line
        );
    }
}

/// What a test expects one event to say.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The payload bytes the event should carry (the captured part).
    pub payload: &'a [u8],
    /// `Length`: the payload length on the wire.
    pub length: usize,
    pub truncated: bool,
    pub interface: &'a str,
}

/// Every field of `ev` that differs from what `exp` expects, described
/// (empty when the event is right).
pub fn event_diff(ev: &Event, exp: &Expected) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |name: &str, got: String, want: String| {
        if got != want {
            wrong.push(format!("{name}: got {got}, want {want}"));
        }
    };
    check(
        "Destination.Address",
        ev.dst_addr.clone(),
        exp.dst.ip().to_string(),
    );
    check(
        "Destination.Port",
        ev.dst_port.to_string(),
        exp.dst.port().to_string(),
    );
    check(
        "Source.Address",
        ev.src_addr.clone(),
        exp.src.ip().to_string(),
    );
    check(
        "Source.Port",
        ev.src_port.to_string(),
        exp.src.port().to_string(),
    );
    check("Length", ev.length.to_string(), exp.length.to_string());
    check(
        "Truncated",
        ev.truncated.to_string(),
        exp.truncated.to_string(),
    );
    check("Interface", ev.interface.clone(), exp.interface.to_string());
    let version = if exp.src.is_ipv6() { 6 } else { 4 };
    check("IpVersion", ev.ip_version.to_string(), version.to_string());
    if ev.payload != exp.payload {
        let first_diff = ev
            .payload
            .iter()
            .zip(exp.payload)
            .position(|(a, b)| a != b)
            .unwrap_or(ev.payload.len().min(exp.payload.len()));
        wrong.push(format!(
            "Payload: got {} bytes, want {} bytes, first difference at byte {first_diff}",
            ev.payload.len(),
            exp.payload.len()
        ));
    }
    wrong
}

/// Panics, naming every field that differs, unless `ev` says what `exp`
/// expects.
pub fn assert_event(ev: &Event, exp: &Expected) {
    let wrong = event_diff(ev, exp);
    if !wrong.is_empty() {
        let line: String = ev.line.chars().take(600).collect();
        panic!(
            "event from {} is wrong:\n  {}\nline: {line}",
            exp.src,
            wrong.join("\n  ")
        );
    }
}

/// Parses every line, panicking on one that is not a valid entry.
pub(crate) fn parse_all(lines: &[String]) -> Vec<Event> {
    lines
        .iter()
        .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("bad stdout line: {e}")))
        .collect()
}
