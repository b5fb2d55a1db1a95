//! JSON text laid out exactly as python's `json.dump` writes it, which is what crit emits.
//!
//! Two layouts: compact (`", "` between items, `": "` after keys, one line) and indented
//! (`indent=4`: one item per line, `","` at line ends, `[]`/`{}` for empty containers).
//! Strings are escaped with `ensure_ascii` semantics: `\"`, `\\`, the short escapes for
//! `\b \f \n \r \t`, and `\uXXXX` (lowercase hex, surrogate pairs above the BMP) for every
//! other character outside printable ASCII, DEL included.

use serde_json::Value;

/// Appends `value` as JSON text to `out`; `indent` = `Some(4)` for crit's `--pretty`.
pub fn write(out: &mut String, value: &Value, indent: Option<usize>) {
    write_at(out, value, indent, 0);
}

/// `value` as JSON text.
pub fn to_string(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::with_capacity(4096);
    write(&mut out, value, indent);
    out
}

fn write_at(out: &mut String, value: &Value, indent: Option<usize>, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separate(out, indent, level + 1, i == 0);
                write_at(out, item, indent, level + 1);
            }
            close(out, indent, level, ']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                separate(out, indent, level + 1, i == 0);
                write_str(out, key);
                out.push_str(": ");
                write_at(out, item, indent, level + 1);
            }
            close(out, indent, level, '}');
        }
    }
}

fn separate(out: &mut String, indent: Option<usize>, level: usize, first: bool) {
    match indent {
        Some(width) => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            push_spaces(out, width * level);
        }
        None if !first => out.push_str(", "),
        None => {}
    }
}

fn close(out: &mut String, indent: Option<usize>, level: usize, bracket: char) {
    if let Some(width) = indent {
        out.push('\n');
        push_spaces(out, width * level);
    }
    out.push(bracket);
}

fn push_spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Writes `s` as a quoted JSON string with python's `ensure_ascii` escaping.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indented_layout_matches_python_indent_4() {
        let v = json!({"magic": "X", "entries": [{"a": 1, "b": [], "c": {}}, {"d": [1, 2]}]});
        let expected = "{\n    \"magic\": \"X\",\n    \"entries\": [\n        {\n            \"a\": 1,\n            \"b\": [],\n            \"c\": {}\n        },\n        {\n            \"d\": [\n                1,\n                2\n            ]\n        }\n    ]\n}";
        assert_eq!(to_string(&v, Some(4)), expected);
    }

    #[test]
    fn compact_layout_uses_python_separators() {
        let v = json!({"a": [1, 2], "b": {"c": true}, "u": 18446744073709551615u64});
        assert_eq!(
            to_string(&v, None),
            "{\"a\": [1, 2], \"b\": {\"c\": true}, \"u\": 18446744073709551615}"
        );
    }

    #[test]
    fn strings_are_escaped_like_ensure_ascii() {
        let mut out = String::new();
        write_str(&mut out, "/x/\u{e9}\u{7f}\u{1}\"\\\n\u{1f600}");
        assert_eq!(out, "\"/x/\\u00e9\\u007f\\u0001\\\"\\\\\\n\\ud83d\\ude00\"");
    }
}
