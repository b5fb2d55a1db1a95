//! A small protobuf wire-format scanner.
//!
//! The reader must look at a few fields of a message before it knows the message's Rust type:
//! the length of an extra payload (`pipe_data_entry.bytes`), whether a ghost file is chunked,
//! the pagemap fields. Decoding the whole message with prost for that would allocate; this
//! scanner walks the tags in place instead and never allocates. It also backs the check of
//! proto2 `required` fields (see `validate`).

use std::fmt;

/// Wire types of the protobuf encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

/// A malformed encoding, with the byte offset inside the message where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {} of the message", self.what, self.offset)
    }
}

impl std::error::Error for WireError {}

/// The value of one field occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    /// A group start or end marker (unused by CRIU's schema; skipped).
    Group,
}

impl Value<'_> {
    /// The integer value of a varint or fixed field.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Varint(v) | Value::Fixed64(v) => Some(v),
            Value::Fixed32(v) => Some(u64::from(v)),
            _ => None,
        }
    }
}

/// One field occurrence: its number, its offset in the message and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub offset: usize,
    pub value: Value<'a>,
}

/// Reads a varint at `*pos`, advancing it.
#[inline]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    // Most varints in images (tags, small counts) are one byte.
    if let Some(&byte) = buf.get(*pos)
        && byte < 0x80
    {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    read_varint_slow(buf, pos)
}

#[cold]
fn read_varint_slow(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&byte) = buf.get(*pos) else {
            return Err(WireError {
                offset: start,
                what: "truncated varint",
            });
        };
        *pos += 1;
        if shift == 63 && byte > 1 {
            break;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 63 {
            break;
        }
    }
    Err(WireError {
        offset: start,
        what: "varint longer than 64 bits",
    })
}

/// Iterates the fields of one message (not descending into sub-messages).
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Starts a scan of `buf` as one message.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields {
        buf,
        pos: 0,
        failed: false,
    }
}

impl<'a> Fields<'a> {
    #[inline]
    fn next_field(&mut self) -> Result<Field<'a>, WireError> {
        let offset = self.pos;
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(WireError {
                offset,
                what: "invalid field number",
            });
        }
        let number = number as u32;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(self.buf, &mut self.pos)?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take::<8>(offset)?)),
            2 => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| self.pos.checked_add(len))
                    .filter(|&end| end <= self.buf.len())
                    .ok_or(WireError {
                        offset,
                        what: "length-delimited field runs past the end of the message",
                    })?;
                let bytes = &self.buf[self.pos..end];
                self.pos = end;
                Value::Len(bytes)
            }
            3 | 4 => Value::Group,
            5 => Value::Fixed32(u32::from_le_bytes(self.take::<4>(offset)?)),
            _ => {
                return Err(WireError {
                    offset,
                    what: "invalid wire type",
                });
            }
        };
        Ok(Field {
            number,
            offset,
            value,
        })
    }

    fn take<const N: usize>(&mut self, offset: usize) -> Result<[u8; N], WireError> {
        let bytes = self.buf.get(self.pos..self.pos + N).ok_or(WireError {
            offset,
            what: "truncated fixed-width field",
        })?;
        self.pos += N;
        Ok(bytes.try_into().expect("slice has length N"))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// The last occurrence of integer field `number` (protobuf's "last one wins"), if any.
pub fn find_u64(buf: &[u8], number: u32) -> Result<Option<u64>, WireError> {
    let mut found = None;
    for field in fields(buf) {
        let field = field?;
        if field.number == number {
            found = field.value.as_u64();
        }
    }
    Ok(found)
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    put_varint(out, u64::from(number) << 3);
    put_varint(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn overlong_and_truncated_varints_are_errors() {
        let mut pos = 0;
        let err = read_varint(&[0xff; 11], &mut pos).unwrap_err();
        assert_eq!(err.what, "varint longer than 64 bits");
        let mut pos = 0;
        let err = read_varint(&[0x80, 0x80], &mut pos).unwrap_err();
        assert_eq!(err.what, "truncated varint");
    }

    #[test]
    fn find_u64_takes_the_last_occurrence_and_skips_other_types() {
        let mut buf = Vec::new();
        put_varint_field(&mut buf, 2, 7);
        buf.extend_from_slice(&[0x1a, 2, 0xaa, 0xbb]); // field 3, len 2
        put_varint_field(&mut buf, 2, 9);
        assert_eq!(find_u64(&buf, 2), Ok(Some(9)));
        assert_eq!(find_u64(&buf, 4), Ok(None));
    }

    #[test]
    fn length_past_end_is_an_error_not_a_panic() {
        let buf = [0x1a, 0x7f, 0x00];
        let err = find_u64(&buf, 1).unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(err.what.contains("past the end"));
    }
}
