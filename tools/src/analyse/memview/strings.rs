//! argv and environment, read from the process's own memory.
//!
//! The kernel keeps the strings a process was started with on its stack, between
//! `mm_arg_start..mm_arg_end` and `mm_env_start..mm_env_end`, each NUL-terminated. Reading them
//! from the pages (rather than trusting a recorded copy) shows what the process holds, including
//! any rewrite it made (`setproctitle`).

use std::ops::Range;

use crate::analyse::memory::ProcessMemory;

/// Longest argv or environment area read (the kernel's own limit is far lower in practice).
const MAX_AREA: u64 = 16 << 20;

/// Errors of reading argv or environment.
#[derive(Debug, thiserror::Error)]
pub enum StringsError {
    #[error("process {pid}: {what} area {start:#x}..{end:#x} is inverted or larger than 16 MiB")]
    BadRange {
        pid: u32,
        what: &'static str,
        start: u64,
        end: u64,
    },
    #[error(
        "process {pid}: {what} area {start:#x}..{end:#x}: byte {missing:#x} is not in the images"
    )]
    NotDumped {
        pid: u32,
        what: &'static str,
        start: u64,
        end: u64,
        missing: u64,
    },
}

/// The NUL-separated strings of `range` (`what` is `argv` or `environment`, for errors).
pub fn read_strings(
    memory: &ProcessMemory<'_>,
    range: Range<u64>,
    what: &'static str,
) -> Result<Vec<Vec<u8>>, StringsError> {
    let (start, end) = (range.start, range.end);
    if end < start || end - start > MAX_AREA {
        return Err(StringsError::BadRange {
            pid: memory.pid,
            what,
            start,
            end,
        });
    }
    let bytes = memory
        .read(start, end - start)
        .map_err(|missing| StringsError::NotDumped {
            pid: memory.pid,
            what,
            start,
            end,
            missing,
        })?;

    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(bytes.split(|&byte| byte == 0).map(<[u8]>::to_vec).collect())
}
