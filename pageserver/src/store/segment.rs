//! Segment files: append-only containers of page records, immutable once sealed.
//!
//! ```text
//! segment  = header record*
//! header   = "CRYOSEG\0" (8) | version u32 = 1 | reserved u32 = 0
//! record   = stored_len u32 | codec u8 | 0 u8 ×3 | data_crc u32 | head_crc u32 | data
//! ```
//!
//! All integers are little-endian. `data_crc` is CRC32C of `data`; `head_crc` is CRC32C of the
//! first 12 bytes of the record header. `codec` is a [`Codec`] (raw, zstd, delta + zstd). Records are addressed by the byte offset of their
//! header, which the index stores. A segment belongs to one ingest session; it is fsynced and
//! sealed before the session's checkpoint is committed and is never written again.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use super::codec::Codec;
use super::{PageLoc, StoreError};
use crate::protocol::PAGE_SIZE;

pub const SEGMENT_MAGIC: &[u8; 8] = b"CRYOSEG\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: usize = 16;

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

const PAGE_LIST_HEAD: usize = 16;
const PAGE_LIST_ENTRY: usize = 45;

/// Encodes a sealed segment's page list for the index: sealed length, count, then per page
/// offset u64, stored_len u32, codec u8, hash [32].
pub fn encode_page_list(sealed_len: u64, pages: &[PageLoc]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE_LIST_HEAD + pages.len() * PAGE_LIST_ENTRY);
    out.extend_from_slice(&sealed_len.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for p in pages {
        out.extend_from_slice(&p.offset.to_le_bytes());
        out.extend_from_slice(&p.stored_len.to_le_bytes());
        out.push(p.codec as u8);
        out.extend_from_slice(&p.hash);
    }
    out
}

/// Reads the sealed length and page count of a page list.
pub fn page_list_header(segment: u64, bytes: &[u8]) -> Result<(u64, u64), StoreError> {
    let bad = |reason: String| StoreError::CorruptRecord {
        segment,
        offset: 0,
        reason,
    };
    if bytes.len() < PAGE_LIST_HEAD {
        return Err(bad(format!("page list of {} bytes", bytes.len())));
    }
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let want = count
        .checked_mul(PAGE_LIST_ENTRY as u64)
        .and_then(|b| b.checked_add(PAGE_LIST_HEAD as u64));
    if want != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "page list says {count} pages in {} bytes",
            bytes.len()
        )));
    }
    Ok((len, count))
}

/// Decodes a page list.
pub fn decode_page_list(segment: u64, bytes: &[u8]) -> Result<(u64, Vec<PageLoc>), StoreError> {
    let (len, _) = page_list_header(segment, bytes)?;
    let mut pages = Vec::with_capacity((bytes.len() - PAGE_LIST_HEAD) / PAGE_LIST_ENTRY);
    for e in bytes[PAGE_LIST_HEAD..].chunks_exact(PAGE_LIST_ENTRY) {
        let offset = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
        let codec = Codec::from_u8(e[12]).ok_or_else(|| StoreError::CorruptRecord {
            segment,
            offset,
            reason: format!("page list names codec {}", e[12]),
        })?;
        pages.push(PageLoc {
            segment,
            offset,
            stored_len: u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")),
            codec,
            hash: e[13..].try_into().expect("32 bytes"),
        });
    }
    Ok((len, pages))
}
