//! crit's JSON value → protobuf message: the inverse of [`super::render`] for both the
//! plain and the pretty rendering.
//!
//! Integers are accepted as JSON numbers or as strings: `major:minor` for `dev` fields,
//! flag names for `flags` fields, table names for `dict` fields, and otherwise any python
//! `int(x, 0)` literal (so hex strings and go-crit's quoted 64-bit numbers both work).
//! Enums are accepted by name or by number; bytes as base64 with or without line breaks
//! (quoted-printable for unix socket names); `ipadd` lists as one address string or as
//! raw words. Unlike crit, an unknown key is an error rather than silently dropped, and
//! every error carries the path of the offending field (`thread_info.gpregs.ip`).

use base64::Engine as _;
use prost_reflect::{Cardinality, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use serde_json::Value as Json;

use super::options::{self, FieldOpts};

/// Why a JSON value could not become a message. `path` is the dotted field path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{path}: expected a JSON object for message {message}")]
    NotAnObject { path: String, message: String },
    #[error("{path}: message {message} has no field of that name")]
    UnknownField { path: String, message: String },
    #[error("{path}: required field missing from message {message}")]
    MissingRequired { path: String, message: String },
    #[error("{path}: expected a JSON array for a repeated field")]
    NotAnArray { path: String },
    #[error("{path}: cannot read {found} as {expected}")]
    BadValue {
        path: String,
        expected: String,
        found: String,
    },
}

/// Builds a `desc` message from the JSON object `json`.
pub fn message(desc: &MessageDescriptor, json: &Json) -> Result<DynamicMessage, ParseError> {
    message_at(desc, json, "")
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn message_at(
    desc: &MessageDescriptor,
    json: &Json,
    path: &str,
) -> Result<DynamicMessage, ParseError> {
    let object = json.as_object().ok_or_else(|| ParseError::NotAnObject {
        path: if path.is_empty() {
            "<entry>".into()
        } else {
            path.to_owned()
        },
        message: desc.full_name().to_owned(),
    })?;
    let mut msg = DynamicMessage::new(desc.clone());

    for (key, value) in object {
        let here = join(path, key);
        let field = desc
            .get_field_by_name(key)
            .ok_or_else(|| ParseError::UnknownField {
                path: here.clone(),
                message: desc.full_name().to_owned(),
            })?;
        let opts = options::of(&field);
        let parsed = if field.is_list() {
            let items = value
                .as_array()
                .ok_or_else(|| ParseError::NotAnArray { path: here.clone() })?;
            Value::List(list(&field, items, opts, &here)?)
        } else {
            scalar(&field, value, opts, &here)?
        };
        msg.set_field(&field, parsed);
    }

    for field in desc.fields() {
        if field.cardinality() == Cardinality::Required && !msg.has_field(&field) {
            return Err(ParseError::MissingRequired {
                path: join(path, field.name()),
                message: desc.full_name().to_owned(),
            });
        }
    }
    Ok(msg)
}

fn list(
    field: &FieldDescriptor,
    items: &[Json],
    opts: &FieldOpts,
    path: &str,
) -> Result<Vec<Value>, ParseError> {
    if opts.ipadd
        && let Some(Json::String(text)) = items.first()
    {
        return ip_words(text, path);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| scalar(field, item, opts, &format!("{path}[{i}]")))
        .collect()
}

fn bad(path: &str, expected: impl Into<String>, found: &Json) -> ParseError {
    let mut found = found.to_string();
    if found.len() > 60 {
        found.truncate(57);
        found.push_str("...");
    }
    ParseError::BadValue {
        path: path.to_owned(),
        expected: expected.into(),
        found,
    }
}

fn scalar(
    field: &FieldDescriptor,
    json: &Json,
    opts: &FieldOpts,
    path: &str,
) -> Result<Value, ParseError> {
    match field.kind() {
        Kind::Message(desc) => Ok(Value::Message(message_at(&desc, json, path)?)),
        Kind::Enum(desc) => {
            let number = match json {
                Json::String(name) => desc.get_value_by_name(name).map(|v| v.number()),
                Json::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                _ => None,
            };
            number
                .map(Value::EnumNumber)
                .ok_or_else(|| bad(path, format!("a value of enum {}", desc.name()), json))
        }
        Kind::Bytes => {
            let text = json
                .as_str()
                .ok_or_else(|| bad(path, "a base64 string", json))?;
            let bytes = if opts.conv == Some("unix_name") {
                Some(unquote_printable(text))
            } else {
                decode_base64(text)
            };
            bytes
                .map(|b| Value::Bytes(b.into()))
                .ok_or_else(|| bad(path, "base64 data", json))
        }
        Kind::String => json
            .as_str()
            .map(|s| Value::String(s.to_owned()))
            .ok_or_else(|| bad(path, "a string", json)),
        Kind::Bool => match json {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            Json::Number(n) if n.as_u64() == Some(0) => Ok(Value::Bool(false)),
            Json::Number(n) if n.as_u64() == Some(1) => Ok(Value::Bool(true)),
            _ => Err(bad(path, "true or false", json)),
        },
        Kind::Double => json
            .as_f64()
            .map(Value::F64)
            .ok_or_else(|| bad(path, "a number", json)),
        Kind::Float => json
            .as_f64()
            .map(|f| Value::F32(f as f32))
            .ok_or_else(|| bad(path, "a number", json)),
        kind => {
            let v = integer(field, json, opts).ok_or_else(|| bad(path, "an integer", json))?;
            let out_of_range = || {
                bad(
                    path,
                    format!("{kind:?} (out of range)").to_lowercase(),
                    json,
                )
            };
            match kind {
                Kind::Uint32 | Kind::Fixed32 => {
                    u32::try_from(v).map(Value::U32).map_err(|_| out_of_range())
                }
                Kind::Uint64 | Kind::Fixed64 => {
                    u64::try_from(v).map(Value::U64).map_err(|_| out_of_range())
                }
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                    i32::try_from(v).map(Value::I32).map_err(|_| out_of_range())
                }
                _ => i64::try_from(v).map(Value::I64).map_err(|_| out_of_range()),
            }
        }
    }
}

fn integer(field: &FieldDescriptor, json: &Json, opts: &FieldOpts) -> Option<i128> {
    let text = match json {
        Json::Number(n) => {
            return n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from));
        }
        Json::String(text) => text,
        _ => return None,
    };
    if opts.dev {
        return options::parse_dev(text, opts.odev).map(i128::from);
    }
    if let Some(table) = opts.flags.and_then(options::flag_table) {
        return options::unmap_flags(text, table).map(i128::from);
    }
    if let Some(dict) = opts.dict
        && let Some(table) = options::dict_table(dict, field.name())
        && let Some((n, _)) = table.iter().find(|(_, name)| name == text)
    {
        return Some(i128::from(*n));
    }
    // Older crit wrote 2 as "Dead" nowhere, but go-criu does; accept it.
    if opts.dict == Some("gen") && text == "Dead" {
        return Some(2);
    }
    options::parse_int(text)
}

/// Base64 with or without MIME line breaks.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// Inverse of [`super::render::quoted_printable`].
pub fn unquote_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// An address string as crit stores it: 1 (IPv4) or 4 (IPv6) u32 words in network order.
fn ip_words(text: &str, path: &str) -> Result<Vec<Value>, ParseError> {
    let addr: std::net::IpAddr = text
        .parse()
        .map_err(|_| bad(path, "an IP address", &Json::String(text.to_owned())))?;
    Ok(match addr {
        std::net::IpAddr::V4(v4) => vec![Value::U32(u32::from(v4).to_be())],
        std::net::IpAddr::V6(v6) => {
            let v = u128::from(v6);
            (0..4)
                .rev()
                .map(|i| Value::U32(((v >> (32 * i)) as u32).to_be()))
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryo_format::schema::descriptor_pool;
    use prost::Message as _;
    use serde_json::json;

    fn desc(name: &str) -> MessageDescriptor {
        descriptor_pool().get_message_by_name(name).unwrap()
    }

    #[test]
    fn pretty_and_plain_values_give_the_same_message() {
        let pretty = json!({"start": "0x400000", "end": "0x401000", "pgoff": 0, "shmid": 0,
            "prot": "PROT_READ | PROT_EXEC", "flags": "MAP_PRIVATE", "status": "VMA_AREA_REGULAR | 0x100000", "fd": -1});
        let plain = json!({"start": 4194304, "end": 4198400u64, "pgoff": 0, "shmid": 0,
            "prot": 5, "flags": 2, "status": 0x100001, "fd": -1});
        let a = message(&desc("criu.vma_entry"), &pretty).unwrap();
        let b = message(&desc("criu.vma_entry"), &plain).unwrap();
        assert_eq!(a.encode_to_vec(), b.encode_to_vec());
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = message(
            &desc("criu.pstree_entry"),
            &json!({"pid": 1, "ppid": 0, "pgid": 1}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ParseError::MissingRequired {
                path: "sid".into(),
                message: "criu.pstree_entry".into()
            }
        );
    }

    #[test]
    fn nested_bad_value_reports_its_path() {
        let j = json!({"type": "REG", "id": 1, "reg": {"id": 1, "flags": "O_BOGUS", "pos": 0,
            "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}, "name": "/"}});
        let err = message(&desc("criu.file_entry"), &j).unwrap_err();
        assert!(
            matches!(err, ParseError::BadValue { ref path, .. } if path == "reg.flags"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_out_of_range_numbers_are_refused() {
        let err = message(
            &desc("criu.fs_entry"),
            &json!({"cwd_id": 1, "root_id": 2, "bogus": 3}),
        )
        .unwrap_err();
        assert!(matches!(err, ParseError::UnknownField { ref path, .. } if path == "bogus"));
        let err = message(
            &desc("criu.fs_entry"),
            &json!({"cwd_id": 4294967296u64, "root_id": 2}),
        )
        .unwrap_err();
        assert!(matches!(err, ParseError::BadValue { ref path, .. } if path == "cwd_id"));
    }

    #[test]
    fn ip_strings_expand_to_network_order_words() {
        assert_eq!(
            ip_words("127.0.0.1", "x").unwrap(),
            vec![Value::U32(16777343)]
        );
        assert_eq!(ip_words("::1", "x").unwrap().len(), 4);
    }
}
