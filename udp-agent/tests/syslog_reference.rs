//! The hand-written syslog parser (`encode::syslog`) against `syslog_loose`,
//! the parser vector uses, on a corpus of real-world lines
//! (`tests/data/syslog_corpus.txt`): where `syslog_loose` reads a line's
//! header, both must find the same facility, severity, hostname, app name,
//! process id, message id and message. Lines it cannot read (Cisco's
//! stamps, Fortinet's key=value, no priority) are where the hand-written
//! parser is meant to do better; the test says how many there are.
//!
//! Where both read a line and differ, the difference is listed in
//! [`KNOWN`] with the reason the hand-written reading is the one wanted.

/// Lines both parsers read, differently, and why ours is right.
const KNOWN: [(&str, &str); 2] = [
    (
        "<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
        // RFC 3164 5.4 example 2: a hostname, then CONTENT with no TAG.
        "syslog_loose takes the message's first word for the app name",
    ),
    (
        "<163>Nov 27 2026 23:42:18: %ASA-3-710003: TCP access denied by ACL",
        // Cisco ASA without a device id: the message id starts the text
        // rules match on (`prefix: "%ASA-3"`).
        "syslog_loose takes the ASA message id for the hostname",
    ),
];

use syslog_loose::{Protocol, Variant, parse_message_with_year};
use udp_agent::encode::syslog;

const CORPUS: &str = include_str!("data/syslog_corpus.txt");

fn text(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
}

#[test]
fn agrees_with_syslog_loose_where_it_reads_the_header() {
    let mut compared = 0;
    let mut theirs_unread = Vec::new();
    let mut differ = Vec::new();
    for line in CORPUS.lines() {
        let loose = parse_message_with_year(line, |_| 2026, Variant::Either);
        let ours = syslog::parse(line.as_bytes());
        let read = match loose.protocol {
            Protocol::RFC5424(_) => true,
            Protocol::RFC3164 => loose.timestamp.is_some(),
        };
        if !read {
            theirs_unread.push(line);
            continue;
        }
        compared += 1;
        let fields = |f: Option<u8>, s: Option<u8>, h, a, p, m, msg: String, t: bool| {
            format!("{f:?} {s:?} host={h:?} app={a:?} pid={p:?} msgid={m:?} msg={msg:?} stamp={t}")
        };
        let mine = fields(
            ours.facility(),
            ours.severity(),
            text(ours.hostname),
            text(ours.app_name),
            text(ours.proc_id),
            text(ours.msg_id),
            String::from_utf8_lossy(ours.message).trim().to_owned(),
            ours.stamp.is_some(),
        );
        let theirs = fields(
            loose.facility.map(|f| f as u8),
            loose.severity.map(|s| s as u8),
            loose.hostname.map(str::to_owned),
            loose.appname.map(str::to_owned),
            loose.procid.map(|p| p.to_string()),
            loose.msgid.map(str::to_owned),
            loose.msg.trim().to_owned(),
            loose.timestamp.is_some(),
        );
        if mine != theirs && !KNOWN.iter().any(|(known, _)| *known == line) {
            differ.push(format!("{line}\n  ours:   {mine}\n  theirs: {theirs}"));
        }
        if mine == theirs && KNOWN.iter().any(|(known, _)| *known == line) {
            differ.push(format!("{line}\n  now read alike: remove it from KNOWN"));
        }
    }
    println!(
        "compared {compared} lines; syslog_loose could not read {}: {theirs_unread:#?}",
        theirs_unread.len()
    );
    assert!(compared >= 12, "only {compared} lines compared");
    assert!(
        differ.is_empty(),
        "{} lines read differently:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
