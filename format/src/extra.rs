//! Sizes of the raw payloads that follow some entries.
//!
//! A few image types append raw bytes after an entry's message (pipe contents after a
//! `pipe_data_entry`, socket queue packets after a `sk_packet_entry`, ...). Their size is
//! written inside the message, so framing the next entry needs a peek at one or two fields.
//! The peek uses the wire scanner: no decoding, no allocation.

use crate::magic::ExtraKind;
use crate::wire::{self, WireError};

/// Why the size of an extra payload could not be worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraSizeError {
    /// The message is not valid protobuf.
    Wire(WireError),
    /// The field that carries the size is absent.
    MissingField(&'static str),
    /// A nested record inside the payload is cut short or malformed (ipcns-msg).
    Nested { what: &'static str, offset: usize },
}

impl From<WireError> for ExtraSizeError {
    fn from(e: WireError) -> Self {
        ExtraSizeError::Wire(e)
    }
}

/// How many bytes follow the entry `payload` in an image whose extra kind is `kind`.
///
/// `rest` is everything after the message; it is only read for the nested records of
/// ipcns-msg. Ghost files are not handled here (their layout depends on entry 0; the reader
/// frames them itself). The result may exceed `rest.len()`: the caller reports that.
pub fn extra_len(kind: ExtraKind, payload: &[u8], rest: &[u8]) -> Result<u64, ExtraSizeError> {
    let field = |number: u32, name: &'static str| -> Result<u64, ExtraSizeError> {
        wire::find_u64(payload, number)?.ok_or(ExtraSizeError::MissingField(name))
    };
    Ok(match kind {
        ExtraKind::None | ExtraKind::GhostFile => 0,
        ExtraKind::Field { number, name } => field(number, name)?,
        ExtraKind::TcpStream => field(1, "inq_len")?.saturating_add(field(3, "outq_len")?),
        ExtraKind::IpcShm => {
            let in_pagemaps = wire::find_u64(payload, 3)?.unwrap_or(0) != 0;
            if in_pagemaps {
                0
            } else {
                round_up(field(2, "size")?, 4)
            }
        }
        ExtraKind::IpcSem => round_up(field(2, "nsems")?.saturating_mul(2), 8),
        ExtraKind::BpfMapData => field(2, "keys_bytes")?.saturating_add(field(3, "values_bytes")?),
        ExtraKind::IpcMsg => ipc_msg_len(field(3, "qnum")?, rest)?,
    })
}

/// Length of `qnum` nested records: u32 length, `ipc_msg` message, `msize` bytes padded to 8.
fn ipc_msg_len(qnum: u64, rest: &[u8]) -> Result<u64, ExtraSizeError> {
    let mut pos = 0usize;
    for _ in 0..qnum {
        let len_bytes = rest.get(pos..pos + 4).ok_or(ExtraSizeError::Nested {
            what: "ipc_msg length cut short",
            offset: pos,
        })?;
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let msg_start = pos + 4;
        let msg =
            rest.get(msg_start..msg_start.saturating_add(len))
                .ok_or(ExtraSizeError::Nested {
                    what: "ipc_msg message runs past the end",
                    offset: pos,
                })?;
        let msize = wire::find_u64(msg, 2)?.ok_or(ExtraSizeError::MissingField("msize"))?;
        let data = usize::try_from(round_up(msize, 8)).unwrap_or(usize::MAX);
        pos = msg_start
            .saturating_add(len)
            .checked_add(data)
            .filter(|&end| end <= rest.len())
            .ok_or(ExtraSizeError::Nested {
                what: "ipc_msg data runs past the end",
                offset: pos,
            })?;
    }
    Ok(pos as u64)
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to).saturating_mul(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_varint_field;

    #[test]
    fn pipe_data_extra_is_its_bytes_field() {
        let mut msg = Vec::new();
        put_varint_field(&mut msg, 1, 5);
        put_varint_field(&mut msg, 2, 12);
        let kind = ExtraKind::Field {
            number: 2,
            name: "bytes",
        };
        assert_eq!(extra_len(kind, &msg, &[]), Ok(12));
        assert_eq!(
            extra_len(kind, &msg[..2], &[]),
            Err(ExtraSizeError::MissingField("bytes"))
        );
    }

    #[test]
    fn sem_and_shm_extras_are_padded() {
        let mut sem = Vec::new();
        put_varint_field(&mut sem, 2, 3);
        assert_eq!(extra_len(ExtraKind::IpcSem, &sem, &[]), Ok(8));
        let mut shm = Vec::new();
        put_varint_field(&mut shm, 2, 5);
        assert_eq!(extra_len(ExtraKind::IpcShm, &shm, &[]), Ok(8));
        put_varint_field(&mut shm, 3, 1);
        assert_eq!(extra_len(ExtraKind::IpcShm, &shm, &[]), Ok(0));
    }

    #[test]
    fn ipc_msg_walks_nested_records() {
        let mut entry = Vec::new();
        put_varint_field(&mut entry, 3, 2);
        let mut rest = Vec::new();
        for msize in [3u64, 8] {
            let mut m = Vec::new();
            put_varint_field(&mut m, 1, 1);
            put_varint_field(&mut m, 2, msize);
            rest.extend_from_slice(&(m.len() as u32).to_le_bytes());
            rest.extend_from_slice(&m);
            rest.extend(std::iter::repeat_n(0xab, 8));
        }
        assert_eq!(
            extra_len(ExtraKind::IpcMsg, &entry, &rest),
            Ok(rest.len() as u64)
        );
        let cut = &rest[..rest.len() - 1];
        assert!(matches!(
            extra_len(ExtraKind::IpcMsg, &entry, cut),
            Err(ExtraSizeError::Nested { .. })
        ));
    }
}
