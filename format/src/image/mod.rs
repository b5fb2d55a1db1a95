//! Reading one image file: header check, entry framing, typed decoding.
//!
//! `ImageFile::open` maps the file read-only and checks its header against the magic table.
//! `entries()` then frames it into `RawEntry`s that borrow from the mapping — the message
//! bytes and any extra payload (pipe contents, socket packets) are never copied. Typed access
//! (`decode_all`, `decode_one`) decodes with prost and then checks proto2 `required` fields,
//! which prost does not enforce. Every error names the file, and where it applies the entry
//! index, the byte offset and the field.
//!
//! An absent image is an error for `open`; `open_or_empty` treats it as an image with no
//! entries, the way CRIU does for optional images — the caller decides which applies.

mod entries;
mod error;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::magic::{self, Header, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, Magic};
use crate::validate;

pub use entries::{Entries, RawEntry, is_mixed};
pub use error::ImageError;

enum Data {
    Mapped(Mmap),
    Owned(Vec<u8>),
    Empty,
}

/// An open image file.
pub struct ImageFile {
    path: PathBuf,
    data: Data,
    magic: &'static Magic,
    body: usize,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("magic", &self.magic.name)
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl ImageFile {
    /// Maps `path` and checks its header; the type comes from the file's magic.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let path = path.as_ref().to_path_buf();
        let data = map(&path)?;
        Self::with_data(path, data)
    }

    /// Reads an image held in memory (received over a socket, built by a test or a fuzzer).
    /// `name` stands in for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, ImageError> {
        Self::with_data(name.into(), Data::Owned(bytes))
    }

    fn with_data(path: PathBuf, data: Data) -> Result<Self, ImageError> {
        let bytes = match &data {
            Data::Mapped(m) => &m[..],
            Data::Owned(v) => &v[..],
            Data::Empty => &[][..],
        };
        let (magic, body) = parse_header(&path, bytes)?;
        Ok(ImageFile {
            path,
            data,
            magic,
            body,
        })
    }

    /// Opens `path`, which must be an image of type `expected`.
    pub fn open_expect(
        path: impl AsRef<Path>,
        expected: &'static Magic,
    ) -> Result<Self, ImageError> {
        let image = Self::open(path)?;
        if image.magic.value != expected.value {
            return Err(ImageError::WrongType {
                path: image.path,
                expected: expected.name,
                found: image.magic.name,
            });
        }
        Ok(image)
    }

    /// Like `open_expect`, but an absent file is an image of that type with no entries.
    pub fn open_or_empty(
        path: impl AsRef<Path>,
        expected: &'static Magic,
    ) -> Result<Self, ImageError> {
        match Self::open_expect(path.as_ref(), expected) {
            Err(e) if e.is_not_found() => Ok(ImageFile {
                path: path.as_ref().to_path_buf(),
                data: Data::Empty,
                magic: expected,
                body: 0,
            }),
            other => other,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image type (canonical name for aliased values: a shmem pagemap reads as PAGEMAP).
    pub fn magic(&self) -> &'static Magic {
        self.magic
    }

    /// The whole file, header included.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
            Data::Empty => &[],
        }
    }

    /// Everything after the header.
    pub fn body(&self) -> &[u8] {
        &self.bytes()[self.body..]
    }

    /// Iterates the entries. Framing errors end the iteration after being yielded once.
    pub fn entries(&self) -> Entries<'_> {
        Entries::new(self)
    }

    /// Decodes entry `entry` as `M`, checking required fields against the entry's message.
    pub fn decode<M: prost::Message + Default>(
        &self,
        entry: &RawEntry<'_>,
    ) -> Result<M, ImageError> {
        let message = entry.message.ok_or_else(|| ImageError::NoMessage {
            path: self.path.clone(),
            magic: self.magic.name,
        })?;
        let msg = M::decode(entry.payload).map_err(|source| ImageError::Decode {
            path: self.path.clone(),
            index: entry.index,
            message,
            source,
        })?;
        self.check(entry)?;
        Ok(msg)
    }

    /// Checks an entry's encoding and required fields without decoding it.
    pub fn check(&self, entry: &RawEntry<'_>) -> Result<(), ImageError> {
        let Some(message) = entry.message else {
            return Ok(());
        };
        validate::check_entry(message, entry.payload).map_err(|source| ImageError::Invalid {
            path: self.path.clone(),
            index: entry.index,
            source,
        })
    }

    /// Decodes every entry as `M`.
    pub fn decode_all<M: prost::Message + Default>(&self) -> Result<Vec<M>, ImageError> {
        let mut out = Vec::new();
        for entry in self.entries() {
            out.push(self.decode(&entry?)?);
        }
        Ok(out)
    }

    /// Decodes the image's single entry as `M` (core, mm, ids, fs, inventory...).
    pub fn decode_one<M: prost::Message + Default>(&self) -> Result<M, ImageError> {
        let mut entries = self.entries();
        let first = entries.next().transpose()?;
        let extra = entries.count();
        match first {
            Some(entry) if extra == 0 => self.decode(&entry),
            _ => Err(ImageError::EntryCount {
                path: self.path.clone(),
                found: usize::from(first.is_some()) + extra,
            }),
        }
    }

    /// Decodes every entry as `M` together with its extra payload (pipes-data, sk-queues...).
    pub fn decode_with_extra<M: prost::Message + Default>(
        &self,
    ) -> Result<Vec<(M, &[u8])>, ImageError> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let entry = entry?;
            out.push((self.decode(&entry)?, entry.extra.unwrap_or(&[])));
        }
        Ok(out)
    }
}

fn map(path: &Path) -> Result<Data, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(ImageError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    let len = meta.len();
    if len == 0 {
        return Ok(Data::Empty);
    }
    // SAFETY: the map is read-only and private to this process; CRIU image files are not
    // modified while read (a concurrent truncation would fault, which is the documented risk
    // of reading images that another process is rewriting).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ImageError::Map {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Data::Mapped(mmap))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the header, returning the image type and the offset of the first entry.
pub(crate) fn parse_header(
    path: &Path,
    bytes: &[u8],
) -> Result<(&'static Magic, usize), ImageError> {
    let truncated = |needed| ImageError::TruncatedHeader {
        path: path.to_path_buf(),
        len: bytes.len(),
        needed,
    };
    let first = read_u32(bytes, 0).ok_or_else(|| truncated(4))?;
    if first == magic::well_known::inventory().value {
        return Ok((magic::well_known::inventory(), 4));
    }
    if first != IMG_COMMON_MAGIC && first != IMG_SERVICE_MAGIC {
        return Err(match magic::by_value(first) {
            Some(m) if m.header == Header::Common => ImageError::LegacyV1 {
                path: path.to_path_buf(),
                name: m.name,
            },
            _ => ImageError::UnknownMagic {
                path: path.to_path_buf(),
                value: first,
                offset: 0,
            },
        });
    }

    let second = read_u32(bytes, 4).ok_or_else(|| truncated(8))?;
    let m = magic::by_value(second).ok_or_else(|| ImageError::UnknownMagic {
        path: path.to_path_buf(),
        value: second,
        offset: 4,
    })?;
    if m.first_magic() != Some(first) {
        return Err(ImageError::WrongHeader {
            path: path.to_path_buf(),
            first,
            name: m.name,
        });
    }
    Ok((m, 8))
}
