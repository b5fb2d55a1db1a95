//! Whole images ↔ crit's JSON document `{"magic": NAME, "entries": [...]}`.
//!
//! Framing (headers, length prefixes, where extra payloads end) is cryo-format's
//! [`ImageFile`] and [`ImageWriter`]; this module only turns entries into JSON objects and
//! back. Extra payloads go under the key `"extra"` after the message fields, in crit's
//! shapes: base64 text for pipe/fifo data, socket queues, bpf map data and ghost files,
//! `{"inq", "outq"}` for TCP streams, u16 lists for SysV semaphores, `[msg, data, ...]`
//! for SysV message queues.

use std::path::{Path, PathBuf};

use cryo_format::magic::{self, ExtraKind, Layout, Magic};
use cryo_format::schema::{descriptor_pool, descriptor_pool_for};
use cryo_format::{ImageError, ImageFile, ImageWriter, RawEntry, WriteError};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value as Json};

use super::parse::{self, ParseError};
use super::{check, render};

/// How entries are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// Apply the display options (hex, flags, dev, dict, ipadd): crit's `--pretty`.
    pub pretty: bool,
    /// Replace extra payloads by a size summary: crit's `show --nopl`.
    pub nopl: bool,
}

/// Errors of turning an image into JSON.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "image {path}: {magic} images are raw data, not entries (pages are read with `imgtool mem`)"
    )]
    Raw { path: PathBuf, magic: &'static str },
    #[error("image {path}: message {message} is not in cryo's schema")]
    UnknownMessage {
        path: PathBuf,
        message: &'static str,
    },
    #[error("image {path}, entry {index} ({message}), field {field}: {reason}")]
    Field {
        path: PathBuf,
        index: usize,
        message: &'static str,
        field: String,
        reason: String,
    },
    #[error("image {path}, entry {index}: extra payload: {what}")]
    Extra {
        path: PathBuf,
        index: usize,
        what: String,
    },
}

/// Errors of turning JSON into an image.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("JSON document: {what}")]
    Document { what: String },
    #[error("JSON document: unknown image magic {name:?}")]
    UnknownMagic { name: String },
    #[error("JSON document: {name} images are raw data and cannot be encoded from JSON")]
    Raw { name: &'static str },
    #[error("entry {index} ({message})")]
    Entry {
        index: usize,
        message: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("entry {index}: extra payload: {what}")]
    Extra { index: usize, what: String },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The schema to read an image of `magic` with: only the `.proto` files its messages need
/// (tens of microseconds to build, where the whole schema takes milliseconds, which
/// dominates a one-image imgtool process).
fn pool_for(magic: &Magic) -> DescriptorPool {
    magic
        .message
        .and_then(descriptor_pool_for)
        .unwrap_or_else(|| descriptor_pool().clone())
}

fn descriptor(pool: &DescriptorPool, name: &str) -> Option<MessageDescriptor> {
    pool.get_message_by_name(name)
}

/// The JSON document of `image`.
pub fn to_json(image: &ImageFile, opts: RenderOptions) -> Result<Json, DecodeError> {
    let path = image.path();
    let magic = image.magic();
    if !magic.is_framed() {
        return Err(DecodeError::Raw {
            path: path.to_owned(),
            magic: magic.name,
        });
    }

    let pool = pool_for(magic);
    let mut entries = Vec::new();
    for entry in image.entries() {
        let entry = entry?;
        let mut object = decode_entry(&pool, path, &entry, opts.pretty)?;
        if let Some(extra) = entry.extra {
            let omit = opts.nopl && magic.extra == ExtraKind::GhostFile;
            // A chunked ghost file's entry 0 carries nothing; its chunks carry the data.
            let chunked_head = magic.layout == Layout::GhostFile
                && entry.index == 0
                && extra.is_empty()
                && ghost_has_chunks(entry.payload);
            if !omit && !chunked_head {
                let value = if opts.nopl {
                    Json::String(format!("... <{}>", human_size(extra.len() as u64)))
                } else {
                    extra_to_json(&pool, magic, &entry, extra).map_err(|what| {
                        DecodeError::Extra {
                            path: path.to_owned(),
                            index: entry.index,
                            what,
                        }
                    })?
                };
                object.insert("extra".to_owned(), value);
            }
        }
        entries.push(Json::Object(object));
    }

    let mut doc = Map::new();
    doc.insert("magic".to_owned(), Json::String(magic.name.to_owned()));
    doc.insert("entries".to_owned(), Json::Array(entries));
    Ok(Json::Object(doc))
}

fn ghost_has_chunks(payload: &[u8]) -> bool {
    cryo_format::wire::find_u64(payload, 9)
        .ok()
        .flatten()
        .is_some_and(|v| v != 0)
}

/// One entry's message as a JSON object, checked for encoding and required fields.
pub fn decode_entry(
    pool: &DescriptorPool,
    path: &Path,
    entry: &RawEntry<'_>,
    pretty: bool,
) -> Result<Map<String, Json>, DecodeError> {
    let msg = check_entry(pool, path, entry)?;
    Ok(render::message(&msg, pretty))
}

/// One entry decoded reflectively, its encoding and required fields checked; errors name
/// the image, the entry index and the field.
pub fn check_entry(
    pool: &DescriptorPool,
    path: &Path,
    entry: &RawEntry<'_>,
) -> Result<DynamicMessage, DecodeError> {
    let message = entry.message.ok_or_else(|| DecodeError::Raw {
        path: path.to_owned(),
        magic: "unknown",
    })?;
    let desc = descriptor(pool, message).ok_or_else(|| DecodeError::UnknownMessage {
        path: path.to_owned(),
        message,
    })?;
    let field_error = |(field, reason): (String, String)| DecodeError::Field {
        path: path.to_owned(),
        index: entry.index,
        message,
        field,
        reason,
    };

    let msg = DynamicMessage::decode(desc.clone(), entry.payload).map_err(|e| {
        field_error(
            check::locate_wire_error(&desc, entry.payload)
                .unwrap_or_else(|| ("<message>".to_owned(), e.to_string())),
        )
    })?;
    if let Some(missing) = check::missing_required(&msg) {
        return Err(field_error((
            missing,
            "required field is missing".to_owned(),
        )));
    }
    let unknown = render::unknown_field_count(&msg);
    if unknown > 0 {
        tracing::warn!(
            path = %path.display(),
            index = entry.index,
            entry_type = message,
            unknown,
            "fields unknown to cryo's schema are ignored (left out of any JSON)"
        );
    }
    Ok(msg)
}

/// python crit's human-readable size: binary units, no space, decimals only when needed.
pub fn human_size(size: u64) -> String {
    let mut num = size as f64;
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"] {
        if num < 1024.0 {
            return if num.fract() == 0.0 {
                format!("{num:.0}{unit}B")
            } else {
                format!("{num:.1}{unit}B")
            };
        }
        num /= 1024.0;
    }
    format!("{num:.1}YB")
}

fn u64_field(payload: &[u8], number: u32, name: &str) -> Result<u64, String> {
    cryo_format::wire::find_u64(payload, number)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field {name} is missing"))
}

/// The extra payload of `entry` in crit's JSON shape.
fn extra_to_json(
    pool: &DescriptorPool,
    magic: &Magic,
    entry: &RawEntry<'_>,
    extra: &[u8],
) -> Result<Json, String> {
    let b64 = |bytes: &[u8]| Json::String(render::base64_lines(bytes));
    Ok(match magic.extra {
        ExtraKind::None => Json::Null,
        ExtraKind::Field { .. } | ExtraKind::BpfMapData | ExtraKind::GhostFile => b64(extra),
        ExtraKind::TcpStream => {
            let inq = u64_field(entry.payload, 1, "inq_len")? as usize;
            let (inq, outq) = extra.split_at(inq.min(extra.len()));
            let mut both = Map::new();
            both.insert("inq".to_owned(), b64(inq));
            both.insert("outq".to_owned(), b64(outq));
            Json::Object(both)
        }
        ExtraKind::IpcShm => {
            let size = u64_field(entry.payload, 2, "size")? as usize;
            b64(&extra[..size.min(extra.len())])
        }
        ExtraKind::IpcSem => {
            let nsems = u64_field(entry.payload, 2, "nsems")? as usize;
            Json::Array(
                extra
                    .chunks_exact(2)
                    .take(nsems)
                    .map(|c| Json::from(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            )
        }
        ExtraKind::IpcMsg => ipc_msgs_to_json(pool, extra)?,
    })
}

/// `qnum` × (u32 length, `ipc_msg`, `msize` bytes padded to 8) → `[msg, b64, msg, b64...]`.
fn ipc_msgs_to_json(pool: &DescriptorPool, mut extra: &[u8]) -> Result<Json, String> {
    let desc = descriptor(pool, "criu.ipc_msg").ok_or("criu.ipc_msg missing from the schema")?;
    let mut out = Vec::new();
    while !extra.is_empty() {
        let len = extra
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("ipc_msg length cut short")?;
        let body = extra.get(4..4 + len).ok_or("ipc_msg cut short")?;
        let msg = DynamicMessage::decode(desc.clone(), body).map_err(|e| e.to_string())?;
        let msize = msg
            .get_field_by_name("msize")
            .and_then(|v| v.as_u32())
            .unwrap_or(0) as usize;
        let data_at = 4 + len;
        let padded = msize.div_ceil(8) * 8;
        let data = extra
            .get(data_at..data_at + msize)
            .ok_or("ipc_msg data cut short")?;
        out.push(Json::Object(render::message(&msg, false)));
        out.push(Json::String(render::base64_lines(data)));
        extra = extra.get(data_at + padded..).unwrap_or_default();
    }
    Ok(Json::Array(out))
}

/// Writes the image described by `doc` to `out` (through a temporary file renamed into
/// place, so a failure leaves no file at `out`).
pub fn from_json(doc: &Json, out: &Path) -> Result<PathBuf, EncodeError> {
    let document = |what: &str| EncodeError::Document {
        what: what.to_owned(),
    };
    let name = doc
        .get("magic")
        .and_then(Json::as_str)
        .ok_or_else(|| document("no \"magic\" string"))?;
    let entries = doc
        .get("entries")
        .and_then(Json::as_array)
        .ok_or_else(|| document("no \"entries\" array"))?;
    let magic = magic::by_name(name).ok_or_else(|| EncodeError::UnknownMagic {
        name: name.to_owned(),
    })?;
    if !magic.is_framed() {
        return Err(EncodeError::Raw { name: magic.name });
    }

    // Encode everything before creating the file: a bad entry leaves nothing behind.
    let pool = pool_for(magic);
    let mut encoded = Vec::with_capacity(entries.len());
    let mut ghost_chunks = false;
    for (index, entry) in entries.iter().enumerate() {
        let message = magic
            .message_at(index, ghost_chunks)
            .ok_or(EncodeError::Raw { name: magic.name })?;
        let desc = descriptor(&pool, message)
            .ok_or_else(|| document(&format!("{message} not in schema")))?;
        let mut object = entry
            .as_object()
            .cloned()
            .ok_or_else(|| EncodeError::Entry {
                index,
                message,
                source: ParseError::NotAnObject {
                    path: "<entry>".to_owned(),
                    message: message.to_owned(),
                },
            })?;
        let extra = object.remove("extra");
        let msg =
            parse::message(&desc, &Json::Object(object)).map_err(|source| EncodeError::Entry {
                index,
                message,
                source,
            })?;
        if magic.layout == Layout::GhostFile && index == 0 {
            ghost_chunks = msg
                .get_field_by_name("chunks")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
        }
        let payload = msg.encode_to_vec();
        let extra = match extra {
            Some(value) => extra_from_json(&pool, magic, &msg, &value)
                .map_err(|what| EncodeError::Extra { index, what })?,
            None => Vec::new(),
        };
        encoded.push((payload, extra));
    }

    let mut writer = ImageWriter::create(out, magic)?;
    for (payload, extra) in &encoded {
        writer.write_raw(payload, extra)?;
    }
    Ok(writer.finish()?)
}

fn extra_from_json(
    pool: &DescriptorPool,
    magic: &Magic,
    msg: &DynamicMessage,
    value: &Json,
) -> Result<Vec<u8>, String> {
    let b64 = |v: &Json| -> Result<Vec<u8>, String> {
        let text = v.as_str().ok_or("expected a base64 string")?;
        parse::decode_base64(text).ok_or_else(|| "invalid base64".to_owned())
    };
    let field = |name: &str| {
        msg.get_field_by_name(name)
            .and_then(|v| v.as_u64().or_else(|| v.as_u32().map(u64::from)))
            .unwrap_or(0) as usize
    };
    Ok(match magic.extra {
        ExtraKind::None => return Err(format!("{} entries carry no extra payload", magic.name)),
        ExtraKind::Field { .. } | ExtraKind::BpfMapData | ExtraKind::GhostFile => b64(value)?,
        ExtraKind::TcpStream => {
            let mut bytes = b64(value.get("inq").ok_or("no \"inq\"")?)?;
            bytes.extend(b64(value.get("outq").ok_or("no \"outq\"")?)?);
            bytes
        }
        ExtraKind::IpcShm => {
            let mut bytes = b64(value)?;
            bytes.resize(field("size").div_ceil(4) * 4, 0);
            bytes
        }
        ExtraKind::IpcSem => {
            let values = value
                .as_array()
                .ok_or("expected a list of semaphore values")?;
            let mut bytes = Vec::with_capacity(values.len() * 2 + 8);
            for v in values {
                let v = v
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .ok_or("semaphore value is not a u16")?;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.resize(bytes.len().div_ceil(8) * 8, 0);
            bytes
        }
        ExtraKind::IpcMsg => {
            let items = value.as_array().ok_or("expected [msg, data, ...]")?;
            let desc =
                descriptor(pool, "criu.ipc_msg").ok_or("criu.ipc_msg missing from the schema")?;
            let mut bytes = Vec::new();
            for pair in items.chunks(2) {
                let [head, data] = pair else {
                    return Err("message without data".to_owned());
                };
                let head = parse::message(&desc, head)
                    .map_err(|e| e.to_string())?
                    .encode_to_vec();
                bytes.extend_from_slice(&(head.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&head);
                let mut data = b64(data)?;
                data.resize(data.len().div_ceil(8) * 8, 0);
                bytes.extend_from_slice(&data);
            }
            bytes
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_crit() {
        assert_eq!(human_size(100), "100B");
        assert_eq!(human_size(4096), "4KB");
        assert_eq!(human_size(1536 * 1024), "1.5MB");
        assert_eq!(human_size(0), "0B");
    }
}
