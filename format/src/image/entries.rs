//! Framing an image into entries: length prefixes, messages and extra payloads.
//!
//! Each entry is a `u32` length, that many bytes of protobuf message and, for some image
//! types, raw bytes whose size the message announces. Framing borrows everything from the
//! image's bytes and stops at the first error, which names the entry index and byte offset.

use crate::extra::{self, ExtraSizeError};
use crate::magic::{ExtraKind, Layout};
use crate::wire;

use super::{ImageError, ImageFile, read_u32};

/// One entry of an image, borrowed from the mapped file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEntry<'a> {
    /// Position of the entry in the image, from 0.
    pub index: usize,
    /// Byte offset of the entry's length prefix in the file.
    pub offset: usize,
    /// The encoded protobuf message.
    pub payload: &'a [u8],
    /// Raw bytes that follow the message, for image types that have them.
    pub extra: Option<&'a [u8]>,
    /// Full protobuf name of the message (`criu.pagemap_head` for a pagemap's entry 0).
    pub message: Option<&'static str>,
}

/// Iterator over the entries of an image.
pub struct Entries<'a> {
    image: &'a ImageFile,
    pos: usize,
    index: usize,
    ghost_chunks: bool,
    done: bool,
}

impl<'a> Entries<'a> {
    pub(super) fn new(image: &'a ImageFile) -> Self {
        Entries {
            image,
            pos: image.body,
            index: 0,
            ghost_chunks: false,
            done: false,
        }
    }

    fn frame(&mut self) -> Result<Option<RawEntry<'a>>, ImageError> {
        let image = self.image;
        let bytes = image.bytes();
        let path = || image.path.clone();
        let offset = self.pos;
        let index = self.index;
        if offset >= bytes.len() {
            return Ok(None);
        }

        let remaining = bytes.len() - offset;
        let len = read_u32(bytes, offset).ok_or(ImageError::TruncatedLength {
            path: path(),
            index,
            offset,
            remaining,
        })?;
        if len as usize > bytes.len() {
            return Err(ImageError::AbsurdLength {
                path: path(),
                index,
                offset,
                len,
                file_size: bytes.len(),
            });
        }
        let start = offset + 4;
        let end = start + len as usize;
        if end > bytes.len() {
            return Err(ImageError::EntryPastEnd {
                path: path(),
                index,
                offset,
                len,
                remaining: remaining - 4,
            });
        }
        let payload = &bytes[start..end];
        let rest = &bytes[end..];

        let kind = image.magic.extra;
        let extra_len = match kind {
            ExtraKind::None => None,
            ExtraKind::GhostFile => Some(self.ghost_extra(index, payload, rest.len())?),
            _ => Some(extra::extra_len(kind, payload, rest).map_err(|e| match e {
                ExtraSizeError::Wire(error) => ImageError::Wire {
                    path: path(),
                    index,
                    error,
                },
                ExtraSizeError::MissingField(field) => ImageError::ExtraFieldMissing {
                    path: path(),
                    index,
                    field,
                },
                ExtraSizeError::Nested { what, offset } => ImageError::ExtraMalformed {
                    path: path(),
                    index,
                    what,
                    offset,
                },
            })?),
        };
        let extra = match extra_len {
            None => None,
            Some(n) => {
                let fits = usize::try_from(n).ok().filter(|&n| n <= rest.len());
                let n = fits.ok_or(ImageError::ExtraPastEnd {
                    path: path(),
                    index,
                    len: n,
                    remaining: rest.len(),
                })?;
                Some(&rest[..n])
            }
        };

        let message = image.magic.message_at(index, self.ghost_chunks);
        self.pos = end + extra.map_or(0, <[u8]>::len);
        self.index += 1;
        Ok(Some(RawEntry {
            index,
            offset,
            payload,
            extra,
            message,
        }))
    }

    /// Ghost files: entry 0 decides between "the rest of the file is the content" and chunks.
    fn ghost_extra(
        &mut self,
        index: usize,
        payload: &[u8],
        rest: usize,
    ) -> Result<u64, ImageError> {
        let wire_err = |error| ImageError::Wire {
            path: self.image.path.clone(),
            index,
            error,
        };
        if index == 0 {
            self.ghost_chunks = wire::find_u64(payload, 9).map_err(wire_err)?.unwrap_or(0) != 0;
            return Ok(if self.ghost_chunks { 0 } else { rest as u64 });
        }
        // Entries after the first exist only in chunk mode (otherwise entry 0 took the rest).
        wire::find_u64(payload, 1)
            .map_err(wire_err)?
            .ok_or_else(|| ImageError::ExtraFieldMissing {
                path: self.image.path.clone(),
                index,
                field: "len",
            })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<RawEntry<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.frame().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Whether a layout needs per-index message selection (used by tools that decode dynamically).
pub fn is_mixed(layout: Layout) -> bool {
    layout != Layout::Uniform
}
