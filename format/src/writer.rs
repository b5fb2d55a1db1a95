//! Writing one image file as a stream of entries.
//!
//! `ImageWriter::create` writes into `<path>.cryo-tmp` through a `BufWriter`; `finish`
//! flushes, fsyncs, renames the file into place and fsyncs the directory. A writer that is
//! dropped without `finish` (an error, a panic) deletes its temporary file, so a path that
//! exists is always a complete image. Messages are encoded into one reused buffer: no
//! allocation per entry once it has grown.
//!
//! Entries can also be written back raw (`write_raw`), byte for byte as read, which is how
//! tools copy an image without understanding every message.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::extra::{self, ExtraSizeError};
use crate::magic::{ExtraKind, Header, Magic};

/// Suffix of a file being written.
pub const TEMP_SUFFIX: &str = ".cryo-tmp";

/// Errors of writing an image file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create image {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write image {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {path}: {magic} is a raw image type; it has no entries to write")]
    NotFramed { path: PathBuf, magic: &'static str },
    #[error("image {path}, entry {index}: message of {len} bytes does not fit the u32 length")]
    TooLarge {
        path: PathBuf,
        index: usize,
        len: usize,
    },
    #[error(
        "image {path}, entry {index}: extra payload is {given} bytes but the message announces \
         {announced}"
    )]
    ExtraMismatch {
        path: PathBuf,
        index: usize,
        given: usize,
        announced: u64,
    },
    #[error("image {path}, entry {index}: cannot size the extra payload: {what}")]
    ExtraUnsized {
        path: PathBuf,
        index: usize,
        what: String,
    },
}

/// A streaming writer of one image file.
pub struct ImageWriter {
    path: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
    magic: &'static Magic,
    index: usize,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ImageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("path", &self.path)
            .field("magic", &self.magic.name)
            .field("entries", &self.index)
            .finish()
    }
}

/// The temporary path a writer of `path` uses.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

impl ImageWriter {
    /// Starts `path` as an image of type `magic` and writes its header.
    pub fn create(path: impl AsRef<Path>, magic: &'static Magic) -> Result<Self, WriteError> {
        let path = path.as_ref().to_path_buf();
        if !magic.is_framed() {
            return Err(WriteError::NotFramed {
                path,
                magic: magic.name,
            });
        }
        let temp = temp_path(&path);
        let file = File::create(&temp).map_err(|source| WriteError::Create {
            path: temp.clone(),
            source,
        })?;
        let mut writer = ImageWriter {
            path,
            temp,
            out: Some(BufWriter::with_capacity(64 * 1024, file)),
            magic,
            index: 0,
            scratch: Vec::with_capacity(1024),
        };

        let mut header = Vec::with_capacity(8);
        if let Some(first) = magic.first_magic() {
            header.extend_from_slice(&first.to_le_bytes());
        }
        debug_assert!(magic.header != Header::Raw);
        header.extend_from_slice(&magic.value.to_le_bytes());
        writer.put(&header)?;
        Ok(writer)
    }

    /// The final path of the image.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries written so far.
    pub fn entries(&self) -> usize {
        self.index
    }

    /// Writes one entry.
    pub fn write<M: prost::Message>(&mut self, msg: &M) -> Result<(), WriteError> {
        self.write_with_extra(msg, &[])
    }

    /// Writes one entry followed by its extra payload. For image types whose messages size
    /// the payload (pipes-data `bytes`, sk-queues `length`...), the sizes must agree.
    pub fn write_with_extra<M: prost::Message>(
        &mut self,
        msg: &M,
        extra: &[u8],
    ) -> Result<(), WriteError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        msg.encode(&mut scratch)
            .expect("a Vec grows to hold any message");
        let result = self.write_raw(&scratch, extra);
        self.scratch = scratch;
        result
    }

    /// Writes an already-encoded entry, unchanged (re-writing what a reader returned).
    pub fn write_raw(&mut self, payload: &[u8], extra: &[u8]) -> Result<(), WriteError> {
        let index = self.index;
        self.check_extra(payload, extra)?;
        let len = u32::try_from(payload.len()).map_err(|_| WriteError::TooLarge {
            path: self.path.clone(),
            index,
            len: payload.len(),
        })?;
        self.put(&len.to_le_bytes())?;
        self.put(payload)?;
        self.put(extra)?;
        self.index += 1;
        Ok(())
    }

    /// Writes an entry as a reader returned it (payload and extra payload unchanged).
    pub fn write_entry(&mut self, entry: &crate::image::RawEntry<'_>) -> Result<(), WriteError> {
        self.write_raw(entry.payload, entry.extra.unwrap_or_default())
    }

    fn check_extra(&self, payload: &[u8], extra: &[u8]) -> Result<(), WriteError> {
        let kind = self.magic.extra;
        // Ghost files and ipcns-msg payloads are framed by the caller; nothing to compare.
        if matches!(kind, ExtraKind::GhostFile | ExtraKind::IpcMsg) {
            return Ok(());
        }
        let announced = extra::extra_len(kind, payload, extra).map_err(|e| {
            let what = match e {
                ExtraSizeError::Wire(w) => w.to_string(),
                ExtraSizeError::MissingField(f) => format!("field {f} is missing"),
                ExtraSizeError::Nested { what, .. } => what.to_owned(),
            };
            WriteError::ExtraUnsized {
                path: self.path.clone(),
                index: self.index,
                what,
            }
        })?;
        if announced != extra.len() as u64 {
            return Err(WriteError::ExtraMismatch {
                path: self.path.clone(),
                index: self.index,
                given: extra.len(),
                announced,
            });
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let out = self.out.as_mut().expect("writer is open until finish");
        out.write_all(bytes).map_err(|source| WriteError::Io {
            path: self.temp.clone(),
            source,
        })
    }

    /// Flushes, fsyncs and renames the image into place. Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf, WriteError> {
        let out = self.out.take().expect("writer is open until finish");
        let io_err = |source| WriteError::Io {
            path: self.temp.clone(),
            source,
        };
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        commit(&self.temp, &self.path)?;
        Ok(self.path.clone())
    }
}

/// Renames a finished temporary file into place and makes the rename durable.
pub(crate) fn commit(temp: &Path, path: &Path) -> Result<(), WriteError> {
    fs::rename(temp, path).map_err(|source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(path).map_err(|source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// fsyncs the directory holding `path`.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.out.take().is_some()
            && let Err(e) = fs::remove_file(&self.temp)
        {
            tracing::warn!(path = %self.temp.display(), error = %e, "cannot remove unfinished image");
        }
    }
}
