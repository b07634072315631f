//! A captured packet as a PutEvents request entry (DESIGN.md, "The event").
//!
//! `Detail` keys are PascalCase as in the article and are a contract: users'
//! rules match on them, so keys are only ever added, never renamed.

use std::{collections::HashMap, ffi::CStr, sync::Arc, time::SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Serialize;

use crate::{clock::WallClock, record::Packet};

pub const DEFAULT_SOURCE: &str = "udp.raw";
pub const DEFAULT_DETAIL_TYPE: &str = "UdpPacket";
pub const DEFAULT_EVENT_BUS: &str = "default";
/// PutEvents' `Time` counts as 14 bytes in the entry size (AWS "Calculating
/// Amazon EventBridge PutEvents event entry size").
pub const TIME_SIZE: usize = 14;

/// One PutEvents request entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub source: Arc<str>,
    pub detail_type: Arc<str>,
    pub event_bus_name: Arc<str>,
    /// The JSON object as a string, as PutEvents takes it.
    pub detail: String,
    /// Wall-clock capture time.
    pub time: SystemTime,
    /// CLOCK_MONOTONIC at capture, for latency measurement.
    pub capture_ns: u64,
}

impl Entry {
    /// The entry's size as AWS counts it against the 256 KB request limit:
    /// Time (14 bytes), Source, DetailType and Detail as UTF-8 bytes
    /// (Resources would count too; we send none).
    pub fn aws_size(&self) -> usize {
        TIME_SIZE + self.source.len() + self.detail_type.len() + self.detail.len()
    }

    /// Billed events: each started 64 KB of an entry is one event
    /// (EventBridge pricing).
    pub fn billed_events(&self) -> u64 {
        self.aws_size().div_ceil(64 * 1024) as u64
    }

    /// The entry as one JSON line, exactly the fields of the PutEvents request
    /// entry (the stdout sink's output; usable with `aws events put-events`).
    pub fn to_json_line(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Line<'a> {
            source: &'a str,
            detail_type: &'a str,
            detail: &'a str,
            time: String,
            event_bus_name: &'a str,
        }
        let line = Line {
            source: &self.source,
            detail_type: &self.detail_type,
            detail: &self.detail,
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            event_bus_name: &self.event_bus_name,
        };
        serde_json::to_string(&line).expect("serialising strings cannot fail")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    address: String,
    port: u16,
}

/// The `Detail` object. Field order is the order users see.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Detail<'a> {
    destination: Endpoint,
    source: Endpoint,
    payload: String,
    length: u32,
    truncated: bool,
    interface: &'a str,
    ip_version: u8,
}

/// Turns packets into entries.
pub struct Encoder {
    source: Arc<str>,
    detail_type: Arc<str>,
    event_bus_name: Arc<str>,
    clock: WallClock,
    interfaces: HashMap<u32, Arc<str>>,
}

impl Encoder {
    pub fn new(source: &str, detail_type: &str, event_bus_name: &str, clock: WallClock) -> Self {
        Self {
            source: source.into(),
            detail_type: detail_type.into(),
            event_bus_name: event_bus_name.into(),
            clock,
            interfaces: HashMap::new(),
        }
    }

    /// Names an interface up front (the agent knows the ones it attached to).
    pub fn name_interface(&mut self, ifindex: u32, name: &str) {
        self.interfaces.insert(ifindex, name.into());
    }

    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    fn interface(&mut self, ifindex: u32) -> Arc<str> {
        self.interfaces
            .entry(ifindex)
            .or_insert_with(|| interface_name(ifindex).into())
            .clone()
    }

    pub fn encode(&mut self, p: &Packet) -> Entry {
        let interface = self.interface(p.ifindex);
        let detail = Detail {
            destination: Endpoint {
                address: p.dst.to_string(),
                port: p.dst_port,
            },
            source: Endpoint {
                address: p.src.to_string(),
                port: p.src_port,
            },
            payload: STANDARD.encode(&p.payload),
            length: p.wire_len,
            truncated: p.truncated(),
            interface: &interface,
            ip_version: p.ip_version(),
        };
        Entry {
            source: self.source.clone(),
            detail_type: self.detail_type.clone(),
            event_bus_name: self.event_bus_name.clone(),
            detail: serde_json::to_string(&detail).expect("serialising strings cannot fail"),
            time: self.clock.to_system_time(p.timestamp_ns),
            capture_ns: p.timestamp_ns,
        }
    }
}

/// The kernel's name for an interface index, or `if<N>` if it has none (any
/// more).
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn packet() -> Packet {
        Packet {
            timestamp_ns: 5_000_000,
            ifindex: 3,
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 40000,
            dst_port: 514,
            wire_len: 5,
            payload: b"hello".to_vec(),
        }
    }

    fn encoder() -> Encoder {
        // 2026-11-27T23:33:17Z minus the 5 ms timestamp below.
        let clock = WallClock::with_offset_ns(1_795_822_397_000_000_000 - 5_000_000);
        let mut e = Encoder::new(
            DEFAULT_SOURCE,
            DEFAULT_DETAIL_TYPE,
            DEFAULT_EVENT_BUS,
            clock,
        );
        e.name_interface(3, "veth0");
        e
    }

    #[test]
    fn golden_ipv4_entry() {
        let entry = encoder().encode(&packet());
        assert_eq!(
            entry.to_json_line(),
            r#"{"Source":"udp.raw","DetailType":"UdpPacket","Detail":"{\"Destination\":{\"Address\":\"198.18.0.1\",\"Port\":514},\"Source\":{\"Address\":\"198.18.0.2\",\"Port\":40000},\"Payload\":\"aGVsbG8=\",\"Length\":5,\"Truncated\":false,\"Interface\":\"veth0\",\"IpVersion\":4}","Time":"2026-11-27T23:33:17.000Z","EventBusName":"default"}"#
        );
        assert_eq!(entry.time, UNIX_EPOCH + Duration::from_secs(1_795_822_397));
    }

    #[test]
    fn golden_ipv6_truncated_entry() {
        let mut p = packet();
        p.src = "fd00::2".parse().unwrap();
        p.dst = "fd00::1".parse().unwrap();
        p.wire_len = 9;
        p.payload = vec![0, 255, 1];
        let entry = encoder().encode(&p);
        assert_eq!(
            entry.detail,
            r#"{"Destination":{"Address":"fd00::1","Port":514},"Source":{"Address":"fd00::2","Port":40000},"Payload":"AP8B","Length":9,"Truncated":true,"Interface":"veth0","IpVersion":6}"#
        );
    }

    #[test]
    fn destination_port_is_a_json_number_rules_can_match() {
        let entry = encoder().encode(&packet());
        let detail: serde_json::Value = serde_json::from_str(&entry.detail).unwrap();
        assert_eq!(detail["Destination"]["Port"], serde_json::json!(514));
        assert!(detail["Destination"]["Port"].is_u64());
    }

    #[test]
    fn empty_payload_is_an_empty_string() {
        let mut p = packet();
        p.wire_len = 0;
        p.payload.clear();
        let detail: serde_json::Value = serde_json::from_str(&encoder().encode(&p).detail).unwrap();
        assert_eq!(detail["Payload"], "");
        assert_eq!(detail["Length"], 0);
        assert_eq!(detail["Truncated"], false);
    }

    #[test]
    fn size_as_aws_counts_it() {
        let entry = encoder().encode(&packet());
        assert_eq!(
            entry.aws_size(),
            14 + "udp.raw".len() + "UdpPacket".len() + entry.detail.len()
        );
        assert_eq!(entry.billed_events(), 1);
        let mut big = entry.clone();
        big.detail = "x".repeat(64 * 1024);
        assert_eq!(big.billed_events(), 2);
    }

    #[test]
    fn unknown_interface_gets_a_stable_name() {
        assert_eq!(interface_name(u32::MAX), format!("if{}", u32::MAX));
    }
}
