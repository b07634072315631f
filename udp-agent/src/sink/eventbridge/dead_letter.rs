//! The dead-letter file (--dead-letter): entries that could not be
//! delivered, one JSON line each, so that nothing the agent gave up on is
//! lost without a trace and an operator can replay them
//! (`{"Entry": …}` is exactly what `--sink stdout` prints).
//!
//! The file holds packet payloads, so it is created (and kept) mode 0600.
//! It is bounded: once a write would take it past --dead-letter-max-bytes,
//! it is renamed to `<file>.1` (replacing an older one) and a new file is
//! started, so the two never hold more than twice the limit; an AccessDenied
//! that persists for days cannot fill the disk. A write appends the lines
//! of a whole batch in one `write`; if that fails (a full disk) the file is
//! cut back to where the batch began, so a later append never follows half
//! a line. Failures are rare, so the writes are synchronous.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::encode::Entry;

#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    file: File,
    /// Bytes in the file: where the next batch begins.
    len: u64,
}

/// An entry given up on, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub entry: Entry,
    pub code: String,
    pub message: String,
}

impl DeadLetter {
    /// Opens `path` for appending (creating it mode 0600): earlier runs'
    /// lines stay. An existing file readable by others is narrowed to 0600.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            file: Mutex::new(open_private(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per failed entry, all in one write.
    pub fn write(&self, failed: &[Failed]) -> io::Result<()> {
        let text: String = failed.iter().map(line).collect();
        let bytes = text.len() as u64;
        if bytes > self.max_bytes {
            return Err(io::Error::other(format!(
                "{bytes} bytes of dead letters are more than --dead-letter-max-bytes ({})",
                self.max_bytes
            )));
        }
        let mut open = self.file.lock().expect("dead-letter lock");
        if open.len + bytes > self.max_bytes {
            let rotated = rotated_path(&self.path);
            std::fs::rename(&self.path, &rotated)?;
            *open = open_private(&self.path)?;
        }
        match open.file.write_all(text.as_bytes()) {
            Ok(()) => {
                open.len += bytes;
                Ok(())
            }
            Err(e) => {
                // Cut off whatever part of the batch got written, so the
                // file keeps ending with a whole line. Shrinking a file needs
                // no space; if it fails all the same, the next append starts
                // after the fragment, and `len` says where.
                let start = open.len;
                if open.file.set_len(start).is_err() {
                    open.len = open.file.metadata().map_or(start, |m| m.len());
                }
                Err(e)
            }
        }
    }
}

/// `<file>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_private(path: &Path) -> io::Result<Open> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600))?;
    }
    Ok(Open {
        file,
        len: meta.len(),
    })
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
    /// Far more than any test writes.
    const DEFAULT_MAX_BYTES: u64 = 256 << 20;

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
        DeadLetter::open(&path, DEFAULT_MAX_BYTES)
            .unwrap()
            .write(&[failed("A")])
            .unwrap();
        DeadLetter::open(&path, DEFAULT_MAX_BYTES)
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

    #[test]
    fn the_file_is_private_even_under_a_permissive_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o000) };
        let dl = DeadLetter::open(&path, DEFAULT_MAX_BYTES);
        unsafe { libc::umask(old) };
        dl.unwrap().write(&[failed("A")]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        // An older file that others could read is narrowed.
        let other = dir.path().join("old.ndjson");
        std::fs::write(&other, "").unwrap();
        std::fs::set_permissions(&other, Permissions::from_mode(0o644)).unwrap();
        DeadLetter::open(&other, DEFAULT_MAX_BYTES).unwrap();
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn the_file_rotates_at_its_limit_and_never_holds_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        let one = line(&failed("A")).len() as u64;
        let dl = DeadLetter::open(&path, one * 3).unwrap();
        for code in ["A", "B", "C", "D", "E"] {
            dl.write(&[failed(code)]).unwrap();
        }
        let codes = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["ErrorCode"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(codes(&rotated_path(&path)), ["A", "B", "C"]);
        assert_eq!(codes(&path), ["D", "E"]);
        // A batch larger than the limit is refused, and nothing changes.
        assert!(
            dl.write(&[failed("F"), failed("G"), failed("H"), failed("I")])
                .is_err()
        );
        assert_eq!(codes(&path), ["D", "E"]);
    }

    /// A write that fails part-way on a full disk leaves the file ending
    /// in a whole line, and once there is room again appends go on.
    #[test]
    fn a_full_disk_leaves_no_partial_line() {
        if !test_support::is_root() {
            println!("SKIPPED: needs root to mount a tmpfs");
            return;
        }
        let fs = test_support::Tmpfs::mount("64k");
        let path = fs.path().join("dead.ndjson");
        let dl = DeadLetter::open(&path, DEFAULT_MAX_BYTES).unwrap();
        dl.write(&[failed("A")]).unwrap();
        // Fill the rest of the disk.
        let filler = fs.path().join("filler");
        let mut f = File::create(&filler).unwrap();
        let chunk = vec![b'x'; 1024];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        // A batch of many lines: some of it fits before ENOSPC.
        let batch: Vec<Failed> = (0..50).map(|_| failed("B")).collect();
        let err = dl.write(&batch).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, line(&failed("A")));
        // Room again.
        std::fs::remove_file(&filler).unwrap();
        dl.write(&[failed("C")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let codes: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ErrorCode"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(codes, ["A", "C"]);
    }
}
