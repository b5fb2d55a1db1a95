//! Checks that prost-reflect does not make, and explanations of the errors it does make.
//!
//! prost decodes proto2 messages without checking `required` fields, and its decode errors
//! do not say which field was bad. [`missing_required`] walks a decoded message for absent
//! required fields; [`locate_wire_error`] re-walks the raw bytes of a message that failed to
//! decode, guided by the schema, to name the field (`reg.name: invalid UTF-8`).

use cryo_format::wire::{self, Value as Wire};
use prost_reflect::{Cardinality, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};

/// The dotted path of the first required field missing in `msg` or its sub-messages.
pub fn missing_required(msg: &DynamicMessage) -> Option<String> {
    let desc = msg.descriptor();
    for field in desc.fields() {
        if field.cardinality() == Cardinality::Required && !msg.has_field(&field) {
            return Some(field.name().to_owned());
        }
        if !matches!(field.kind(), Kind::Message(_)) || !msg.has_field(&field) {
            continue;
        }
        match &*msg.get_field(&field) {
            Value::Message(sub) => {
                if let Some(path) = missing_required(sub) {
                    return Some(format!("{}.{path}", field.name()));
                }
            }
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(path) = item.as_message().and_then(missing_required) {
                        return Some(format!("{}[{i}].{path}", field.name()));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// The field path and reason of the first encoding problem in `bytes` read as `desc`.
pub fn locate_wire_error(desc: &MessageDescriptor, bytes: &[u8]) -> Option<(String, String)> {
    for field in wire::fields(bytes) {
        let field = match field {
            Ok(f) => f,
            Err(e) => return Some(("<message>".to_owned(), e.to_string())),
        };
        let Some(fd) = desc.get_field(field.number) else {
            continue;
        };
        let name = fd.name().to_owned();
        match (fd.kind(), field.value) {
            (Kind::String, Wire::Len(data)) => {
                if let Err(e) = std::str::from_utf8(data) {
                    let reason = format!(
                        "invalid UTF-8 at byte {} of the string ({} bytes)",
                        e.valid_up_to(),
                        data.len()
                    );
                    return Some((name, reason));
                }
            }
            (Kind::Message(sub), Wire::Len(data)) => {
                if let Some((path, reason)) = locate_wire_error(&sub, data) {
                    return Some((format!("{name}.{path}"), reason));
                }
            }
            (Kind::Enum(_), Wire::Varint(v)) if i32::try_from(v as i64).is_err() => {
                return Some((name, format!("enum value {v} out of range")));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryo_format::schema::{FownEntry, RegFileEntry, descriptor_pool};
    use prost::Message as _;

    #[test]
    fn invalid_utf8_in_a_nested_path_is_located() {
        let mut reg = RegFileEntry {
            name: "/tmp/ab".into(),
            fown: FownEntry::default(),
            ..Default::default()
        }
        .encode_to_vec();
        let at = reg.windows(2).position(|w| w == b"ab").unwrap();
        reg[at] = 0xff;
        let file = [&[0x08, 0x01, 0x10, 0x01, 0x1a, reg.len() as u8][..], &reg].concat();

        let desc = descriptor_pool()
            .get_message_by_name("criu.file_entry")
            .unwrap();
        assert!(DynamicMessage::decode(desc.clone(), file.as_slice()).is_err());
        let (path, reason) = locate_wire_error(&desc, &file).unwrap();
        assert_eq!(path, "reg.name");
        assert!(reason.contains("UTF-8"), "{reason}");
    }

    #[test]
    fn missing_nested_required_field_is_named() {
        let desc = descriptor_pool()
            .get_message_by_name("criu.file_entry")
            .unwrap();
        // type=REG, id=1, reg={} : reg lacks all of its required fields.
        let msg = DynamicMessage::decode(desc, &[0x08, 0x01, 0x10, 0x01, 0x1a, 0x00][..]).unwrap();
        assert_eq!(missing_required(&msg).as_deref(), Some("reg.id"));
    }
}
