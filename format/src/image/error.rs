//! Errors of reading an image file.

use std::io;
use std::path::PathBuf;

use crate::validate::ValidateError;
use crate::wire::WireError;

/// Errors of reading an image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {path} is a directory, not an image file")]
    IsDirectory { path: PathBuf },
    #[error("cannot map image {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {path} is {len} bytes, too short for its {needed}-byte header")]
    TruncatedHeader {
        path: PathBuf,
        len: usize,
        needed: usize,
    },
    #[error("image {path} has unknown magic {value:#010x} at byte {offset}")]
    UnknownMagic {
        path: PathBuf,
        value: u32,
        offset: usize,
    },
    #[error(
        "image {path} starts with the {name} type magic without the common magic: a v1 image, \
         which cryo does not read (only v1.1, img_version 2)"
    )]
    LegacyV1 { path: PathBuf, name: &'static str },
    #[error("image {path} is a {found} image, expected {expected}")]
    WrongType {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error("image {path}: first magic {first:#010x} does not belong with type {name}")]
    WrongHeader {
        path: PathBuf,
        first: u32,
        name: &'static str,
    },
    #[error(
        "image {path}, entry {index} at byte {offset}: only {remaining} bytes left for the \
         4-byte entry length"
    )]
    TruncatedLength {
        path: PathBuf,
        index: usize,
        offset: usize,
        remaining: usize,
    },
    #[error(
        "image {path}, entry {index} at byte {offset}: length {len} is larger than the whole \
         image ({file_size} bytes)"
    )]
    AbsurdLength {
        path: PathBuf,
        index: usize,
        offset: usize,
        len: u32,
        file_size: usize,
    },
    #[error(
        "image {path}, entry {index} at byte {offset}: the {len}-byte message runs past the end \
         ({remaining} bytes left)"
    )]
    EntryPastEnd {
        path: PathBuf,
        index: usize,
        offset: usize,
        len: u32,
        remaining: usize,
    },
    #[error(
        "image {path}, entry {index}: the {len}-byte extra payload runs past the end \
         ({remaining} bytes left)"
    )]
    ExtraPastEnd {
        path: PathBuf,
        index: usize,
        len: u64,
        remaining: usize,
    },
    #[error("image {path}, entry {index}: field {field} that sizes the extra payload is missing")]
    ExtraFieldMissing {
        path: PathBuf,
        index: usize,
        field: &'static str,
    },
    #[error("image {path}, entry {index}: extra payload: {what} (byte {offset} of the payload)")]
    ExtraMalformed {
        path: PathBuf,
        index: usize,
        what: &'static str,
        offset: usize,
    },
    #[error("image {path}, entry {index}: malformed protobuf: {error}")]
    Wire {
        path: PathBuf,
        index: usize,
        error: WireError,
    },
    #[error("image {path}, entry {index}: cannot decode {message}")]
    Decode {
        path: PathBuf,
        index: usize,
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("image {path}, entry {index} is invalid")]
    Invalid {
        path: PathBuf,
        index: usize,
        #[source]
        source: ValidateError,
    },
    #[error("image {path} ({magic}) has no protobuf message to decode its entries with")]
    NoMessage { path: PathBuf, magic: &'static str },
    #[error("image {path} holds {found} entries, expected exactly one")]
    EntryCount { path: PathBuf, found: usize },
}

impl ImageError {
    /// Whether the error is "the file does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImageError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}
