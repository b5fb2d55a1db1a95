//! Segment files: append-only containers of page records, immutable once sealed.
//!
//! ```text
//! segment  = header record*
//! header   = "CRYOSEG\0" (8) | version u32 = 1 | reserved u32 = 0
//! record   = stored_len u32 | codec u8 | 0 u8 ×3 | data_crc u32 | head_crc u32 | data
//! ```
//!
//! All integers are little-endian. `data_crc` is CRC32C of `data`; `head_crc` is CRC32C of the
//! first 12 bytes of the record header. `codec` 0 = raw 4096 bytes, 1 = one zstd frame that
//! decompresses to exactly 4096 bytes. Records are addressed by the byte offset of their
//! header, which the index stores. A segment belongs to one ingest session; it is fsynced and
//! sealed before the session's checkpoint is committed and is never written again.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::protocol::PAGE_SIZE;

pub const SEGMENT_MAGIC: &[u8; 8] = b"CRYOSEG\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: usize = 16;

/// How a page record's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// File name of segment `id` inside the store's `segments/` directory.
pub fn segment_file_name(id: u64) -> String {
    format!("seg-{id:016x}.seg")
}

/// Parses a segment file name back into its id.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".seg")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Appends records to a new segment.
pub struct SegmentWriter {
    id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl SegmentWriter {
    /// Creates segment `id` in `dir` (fails if it exists).
    pub fn create(dir: &Path, id: u64) -> Result<Self, StoreError> {
        let path = dir.join(segment_file_name(id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out.write_all(&header)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Self {
            id,
            path,
            out,
            len: SEGMENT_HEADER_LEN,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; returns its offset.
    pub fn append(&mut self, codec: Codec, data: &[u8]) -> Result<u64, StoreError> {
        let offset = self.len;
        let mut head = [0u8; RECORD_HEADER_LEN];
        head[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        head[4] = codec as u8;
        head[8..12].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
        let head_crc = crc32c::crc32c(&head[..12]);
        head[12..16].copy_from_slice(&head_crc.to_le_bytes());
        let path = &self.path;
        self.out
            .write_all(&head)
            .map_err(|e| StoreError::io(path, e))?;
        self.out
            .write_all(data)
            .map_err(|e| StoreError::io(path, e))?;
        self.len += (RECORD_HEADER_LEN + data.len()) as u64;
        Ok(offset)
    }

    /// Flushes and fsyncs the segment and its directory: after this the records survive a crash.
    pub fn seal(self) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let io = |e| StoreError::io(&path, e);
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(self.len)
    }
}

/// Reads one record at `offset` of an open segment file into `raw` and returns its codec and
/// length, checking both checksums.
pub fn read_record(
    file: &File,
    segment: u64,
    offset: u64,
    expected_len: u32,
    raw: &mut Vec<u8>,
) -> Result<Codec, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptRecord {
        segment,
        offset,
        reason,
    };
    let mut head = [0u8; RECORD_HEADER_LEN];
    file.read_exact_at(&mut head, offset)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let head_crc = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if crc32c::crc32c(&head[..12]) != head_crc {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    if len != expected_len || len as usize > PAGE_SIZE * 2 {
        return Err(corrupt(format!("length {len}, index says {expected_len}")));
    }
    let codec = Codec::from_u8(head[4]).ok_or_else(|| corrupt(format!("codec {}", head[4])))?;
    raw.resize(len as usize, 0);
    file.read_exact_at(raw, offset + RECORD_HEADER_LEN as u64)
        .map_err(|e| corrupt(format!("data: {e}")))?;
    let data_crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(raw) != data_crc {
        return Err(corrupt("data checksum mismatch".into()));
    }
    Ok(codec)
}

/// Checks a segment file's header.
pub fn check_header(file: &File, segment: u64) -> Result<(), StoreError> {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| StoreError::CorruptRecord {
            segment,
            offset: 0,
            reason: format!("segment header: {e}"),
        })?;
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if &header[..8] != SEGMENT_MAGIC || version != SEGMENT_VERSION {
        return Err(StoreError::CorruptRecord {
            segment,
            offset: 0,
            reason: format!("bad segment magic or version {version}"),
        });
    }
    Ok(())
}
