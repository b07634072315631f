//! The dead-letter file (--dead-letter): entries that could not be
//! delivered, one JSON line each, so that nothing the agent gave up on is
//! lost without a trace and an operator can replay them
//! (`{"Entry": …}` is exactly what `--sink stdout` prints).
//!
//! Writes are synchronous and small (a few KB per failed batch, flushed per
//! batch so a crash loses nothing already counted); failures are rare, so
//! they do not need a task of their own.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::encode::Entry;

#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

/// An entry given up on, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub entry: Entry,
    pub code: String,
    pub message: String,
}

impl DeadLetter {
    /// Opens `path` for appending (creating it): earlier runs' lines stay.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per failed entry and flushes.
    pub fn write(&self, failed: &[Failed]) -> io::Result<()> {
        let mut out = self.out.lock().expect("dead-letter lock");
        for f in failed {
            out.write_all(line(f).as_bytes())?;
        }
        out.flush()
    }
}

/// `{"Entry":<entry>,"ErrorCode":"…","ErrorMessage":"…"}\n`
pub fn line(f: &Failed) -> String {
    let string = |s: &str| serde_json::to_string(s).expect("serialising a string cannot fail");
    format!(
        "{{\"Entry\":{},\"ErrorCode\":{},\"ErrorMessage\":{}}}\n",
        f.entry.to_json_line(),
        string(&f.code),
        string(&f.message)
    )
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;

    fn failed(code: &str) -> Failed {
        Failed {
            entry: Entry {
                source: Arc::from("udp.raw"),
                detail_type: Arc::from("UdpPacket"),
                event_bus_name: Arc::from("default"),
                detail: r#"{"Payload":"aGk="}"#.into(),
                time: UNIX_EPOCH,
                capture_ns: 0,
            },
            code: code.into(),
            message: "Detail is \"bad\"".into(),
        }
    }

    #[test]
    fn one_json_line_per_entry_with_the_stdout_entry_inside() {
        let f = failed("MalformedDetail");
        let line = line(&f);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ErrorCode"], "MalformedDetail");
        assert_eq!(v["ErrorMessage"], "Detail is \"bad\"");
        let stdout: serde_json::Value = serde_json::from_str(&f.entry.to_json_line()).unwrap();
        assert_eq!(v["Entry"], stdout);
        assert_eq!(v["Entry"]["Detail"], r#"{"Payload":"aGk="}"#);
    }

    #[test]
    fn appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        DeadLetter::open(&path)
            .unwrap()
            .write(&[failed("A")])
            .unwrap();
        DeadLetter::open(&path)
            .unwrap()
            .write(&[failed("B"), failed("C")])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let codes: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ErrorCode"].to_string())
            .collect();
        assert_eq!(codes, ["\"A\"", "\"B\"", "\"C\""]);
    }
}
