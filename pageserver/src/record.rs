//! The record tying an image directory to its page-server checkpoint.
//!
//! `dumper dump --page-server` leaves the pages on the server and the other images in the
//! directory; nothing in CRIU's images says which checkpoint holds the pages. When the server
//! speaks cryo's extensions (HELLO told the id), the dumper writes one line to
//! `DIR/page-server-checkpoint` after CLOSE succeeded and before the inventory:
//!
//! ```text
//! checkpoint=42 peer=127.0.0.1:27027
//! ```
//!
//! The restorer reads it to fetch the pages of *this* dump, not of a later one. The file is
//! not an image (`imgtool` skips it).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

/// File name of the record in an image directory.
pub const FILE: &str = "page-server-checkpoint";

/// Which checkpoint of which server holds the pages of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub checkpoint: u64,
    /// The address the dumper sent the pages to.
    pub peer: SocketAddr,
}

/// Reading or writing the record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {during}")]
    Io {
        path: String,
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed page-server checkpoint record {line:?}")]
    Malformed { path: String, line: String },
}

impl CheckpointRecord {
    fn line(&self) -> String {
        format!("checkpoint={} peer={}\n", self.checkpoint, self.peer)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut checkpoint = None;
        let mut peer = None;
        for field in text.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "checkpoint" if checkpoint.is_none() => checkpoint = Some(v.parse().ok()?),
                "peer" if peer.is_none() => peer = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Self {
            checkpoint: checkpoint?,
            peer: peer?,
        })
    }

    /// Writes the record into `dir` atomically (temporary file, fsync, rename, directory
    /// fsync).
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.cryo-tmp"));
        let err = |during, source| RecordError::Io {
            path: path.display().to_string(),
            during,
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(|e| err("creating", e))?;
        f.write_all(self.line().as_bytes())
            .map_err(|e| err("writing", e))?;
        f.sync_all().map_err(|e| err("syncing", e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| err("renaming into place", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("syncing the directory", e))
    }

    /// Reads the record of `dir`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, RecordError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Io {
                    path: path.display().to_string(),
                    during: "reading",
                    source,
                });
            }
        };
        Self::parse(&text).map(Some).ok_or(RecordError::Malformed {
            path: path.display().to_string(),
            line: text.trim_end().to_string(),
        })
    }

    /// Removes the record of `dir`, if any (a stale one from an earlier attempt).
    pub fn remove(dir: &Path) -> Result<(), RecordError> {
        match std::fs::remove_file(dir.join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecordError::Io {
                path: dir.join(FILE).display().to_string(),
                during: "removing a stale record",
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("cryo-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(CheckpointRecord::read(&dir).unwrap(), None);
        let r = CheckpointRecord {
            checkpoint: 42,
            peer: "127.0.0.1:27027".parse().unwrap(),
        };
        r.write(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(FILE)).unwrap(),
            "checkpoint=42 peer=127.0.0.1:27027\n"
        );
        assert_eq!(CheckpointRecord::read(&dir).unwrap(), Some(r));
        std::fs::write(dir.join(FILE), "checkpoint=x\n").unwrap();
        assert!(matches!(
            CheckpointRecord::read(&dir),
            Err(RecordError::Malformed { .. })
        ));
        CheckpointRecord::remove(&dir).unwrap();
        CheckpointRecord::remove(&dir).unwrap();
        assert_eq!(CheckpointRecord::read(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
