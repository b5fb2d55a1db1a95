//! Protobuf message → crit's JSON value.
//!
//! Fields appear in field-number order, and only when present (proto2 presence: required
//! and set optional fields, non-empty repeated ones). Enums print their names; bytes print
//! as MIME base64 (76-column lines, trailing newline) or quoted-printable for unix socket
//! names. Plain mode stops there; pretty mode (`--pretty`, `show`) additionally applies the
//! field's display options to integers: hex strings, flag names, `major:minor` devices,
//! value names from a dict, and IP address strings. A `hex` option on a message field makes
//! every integer inside that message hex, as crit does.

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Value};
use serde_json::{Map, Number, Value as Json};

use super::options::{self, FieldOpts};

/// `msg` as a JSON object.
pub fn message(msg: &DynamicMessage, pretty: bool) -> Map<String, Json> {
    message_at(msg, pretty, false)
}

/// Number of unknown fields in `msg` and its sub-messages: data the JSON cannot carry.
pub fn unknown_field_count(msg: &DynamicMessage) -> usize {
    let own = msg.unknown_fields().count();
    let nested: usize = msg
        .fields()
        .map(|(_, value)| match value {
            Value::Message(m) => unknown_field_count(m),
            Value::List(items) => items
                .iter()
                .filter_map(Value::as_message)
                .map(unknown_field_count)
                .sum(),
            _ => 0,
        })
        .sum();
    own + nested
}

fn message_at(msg: &DynamicMessage, pretty: bool, hex: bool) -> Map<String, Json> {
    let mut fields: Vec<(FieldDescriptor, &Value)> = msg.fields().collect();
    fields.sort_by_key(|(field, _)| field.number());

    let mut out = Map::with_capacity(fields.len());
    for (field, value) in fields {
        let opts = options::of(&field);
        let hex = hex || opts.hex;
        let json = match value {
            Value::List(items) if pretty && opts.ipadd => {
                ip_list(items).unwrap_or_else(|| list(&field, items, opts, pretty, hex))
            }
            Value::List(items) => list(&field, items, opts, pretty, hex),
            single => scalar(&field, single, opts, pretty, hex),
        };
        out.insert(field.name().to_owned(), json);
    }
    out
}

fn list(
    field: &FieldDescriptor,
    items: &[Value],
    opts: &FieldOpts,
    pretty: bool,
    hex: bool,
) -> Json {
    Json::Array(
        items
            .iter()
            .map(|item| scalar(field, item, opts, pretty, hex))
            .collect(),
    )
}

fn scalar(
    field: &FieldDescriptor,
    value: &Value,
    opts: &FieldOpts,
    pretty: bool,
    hex: bool,
) -> Json {
    match value {
        Value::Message(m) => Json::Object(message_at(m, pretty, hex)),
        Value::Bytes(b) if opts.conv == Some("unix_name") => Json::String(quoted_printable(b)),
        Value::Bytes(b) => Json::String(base64_lines(b)),
        Value::String(s) => Json::String(s.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::EnumNumber(n) => match field.kind().as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => Json::String(v.name().to_owned()),
            // An unknown enum value keeps its number (crit would drop the field).
            None => Json::from(*n),
        },
        Value::U32(v) => integer(field, i128::from(*v), opts, pretty, hex),
        Value::U64(v) => integer(field, i128::from(*v), opts, pretty, hex),
        Value::I32(v) => integer(field, i128::from(*v), opts, pretty, hex),
        Value::I64(v) => integer(field, i128::from(*v), opts, pretty, hex),
        Value::F32(v) => Number::from_f64(f64::from(*v)).map_or(Json::Null, Json::Number),
        Value::F64(v) => Number::from_f64(*v).map_or(Json::Null, Json::Number),
        Value::List(_) | Value::Map(_) => Json::Null,
    }
}

fn integer(field: &FieldDescriptor, v: i128, opts: &FieldOpts, pretty: bool, hex: bool) -> Json {
    if pretty {
        if hex {
            return Json::String(hex_string(v));
        }
        if opts.dev {
            return Json::String(options::format_dev(v as u64, opts.odev));
        }
        if let Some(name) = opts.flags {
            return Json::String(match options::flag_table(name) {
                Some(table) => options::map_flags(v as u64, table),
                None => hex_string(v),
            });
        }
        if let Some(dict) = opts.dict {
            let named = options::dict_table(dict, field.name())
                .and_then(|t| t.iter().find(|(n, _)| i128::from(*n) == v));
            if let Some((_, name)) = named {
                return Json::String((*name).to_owned());
            }
        }
    }
    number(v)
}

fn number(v: i128) -> Json {
    match u64::try_from(v) {
        Ok(u) => Json::from(u),
        Err(_) => Json::from(v as i64),
    }
}

/// python's `"0x%x" % v`.
fn hex_string(v: i128) -> String {
    if v < 0 {
        format!("-0x{:x}", v.unsigned_abs())
    } else {
        format!("0x{v:x}")
    }
}

/// python's `base64.encodebytes`: a newline after every 76 characters and at the end.
pub fn base64_lines(bytes: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// python's `quopri.encodestring`: `=XX` for `=` and bytes outside printable ASCII,
/// spaces and tabs kept except before a line end, soft line breaks (`=\n`) past 76 columns.
pub fn quoted_printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut column = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push('\n');
            column = 0;
            continue;
        }
        let at_line_end = matches!(bytes.get(i + 1), None | Some(b'\n'));
        // A line holding only "." is encoded too (binascii.b2a_qp guards SMTP's end marker).
        let lone_dot = b == b'.' && column == 0 && at_line_end;
        let plain =
            (b' '..=b'~').contains(&b) && b != b'=' && !(at_line_end && b == b' ') && !lone_dot
                || (b == b'\t' && !at_line_end);
        let token = if plain {
            (b as char).to_string()
        } else {
            format!("={b:02X}")
        };
        if column + token.len() > 75 && !at_line_end {
            out.push_str("=\n");
            column = 0;
        }
        column += token.len();
        out.push_str(&token);
    }
    out
}

/// crit's rendering of an `ipadd` field: a one-element list with the address text.
fn ip_list(items: &[Value]) -> Option<Json> {
    let words: Vec<u32> = items.iter().map(Value::as_u32).collect::<Option<_>>()?;
    let text = match words.as_slice() {
        [v4] => std::net::Ipv4Addr::from(u32::from_be(*v4)).to_string(),
        [a, b, c, d] => {
            let v6 = [a, b, c, d]
                .iter()
                .fold(0u128, |acc, w| (acc << 32) | u128::from(u32::from_be(**w)));
            std::net::Ipv6Addr::from(v6).to_string()
        }
        _ => return None,
    };
    Some(Json::Array(vec![Json::String(text)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_wraps_at_76_columns_like_encodebytes() {
        assert_eq!(base64_lines(b""), "");
        assert_eq!(base64_lines(b"hello"), "aGVsbG8=\n");
        let long = base64_lines(&[0u8; 60]);
        let lines: Vec<&str> = long.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 76);
    }

    #[test]
    fn task_states_use_criu_names_not_crits_swapped_ones() {
        let desc = cryo_format::schema::descriptor_pool()
            .get_message_by_name("criu.task_core_entry")
            .unwrap();
        let field = desc.get_field_by_name("task_state").unwrap();
        for (state, name) in [(1u32, "Alive"), (3, "Stopped"), (6, "Zombie")] {
            let mut msg = DynamicMessage::new(desc.clone());
            msg.set_field(&field, Value::U32(state));
            assert_eq!(message(&msg, true)["task_state"], Json::from(name));
            assert_eq!(message(&msg, false)["task_state"], Json::from(state));

            let json = serde_json::json!({"task_state": name, "exit_code": 0, "personality": 0,
                "flags": 0, "blk_sigset": "0x0", "comm": "x"});
            let back = super::super::parse::message(&desc, &json).unwrap();
            assert_eq!(back.get_field(&field).as_u32(), Some(state));
        }
        // A state without a name (2, dead) stays a number.
        let mut msg = DynamicMessage::new(desc.clone());
        msg.set_field(&field, Value::U32(2));
        assert_eq!(message(&msg, true)["task_state"], Json::from(2));
    }

    #[test]
    fn quoted_printable_matches_python_quopri() {
        let python = std::path::Path::new("/usr/bin/python3");
        if !python.exists() {
            eprintln!("skipped: /usr/bin/python3 is not installed");
            return;
        }
        let mut cases: Vec<Vec<u8>> = vec![
            b"a b".to_vec(),
            b"a ".to_vec(),
            b"a\tb".to_vec(),
            b"a \nb".to_vec(),
            b"=_x_".to_vec(),
            b".".to_vec(),
            b"a.\nb".to_vec(),
            b".\n.x".to_vec(),
            b"/run/\x00\xffsock".to_vec(),
        ];
        for n in [74, 75, 76, 77, 150] {
            cases.push(vec![b'x'; n]);
            let mut zeros = b"/run/".to_vec();
            zeros.extend(std::iter::repeat_n(0u8, n / 2));
            cases.push(zeros);
        }
        for case in cases {
            let hex: String = case.iter().map(|b| format!("{b:02x}")).collect();
            let script = format!(
                "import quopri,sys; sys.stdout.write(quopri.encodestring(bytes.fromhex('{hex}')).decode())"
            );
            let out = std::process::Command::new(python)
                .args(["-c", &script])
                .output()
                .unwrap();
            let expected = String::from_utf8(out.stdout).unwrap();
            assert_eq!(quoted_printable(&case), expected, "input {case:?}");
            assert_eq!(super::super::parse::unquote_printable(&expected), case);
        }
    }

    #[test]
    fn unix_names_are_quoted_printable() {
        assert_eq!(quoted_printable(b"/run/x\0.sock\xff"), "/run/x=00.sock=FF");
        assert_eq!(quoted_printable(b"a=b "), "a=3Db=20");
    }
}
