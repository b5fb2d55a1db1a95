//! `imgtool mem`: one process's memory, read from its images.
//!
//! - `table`: one row per VMA with where its pages live (pages image, a parent, lazy, or not
//!   dumped: zero-filled anonymous memory or file contents);
//! - `hexdump` of an address range, holes named rather than invented;
//! - `search`: literal, byte or regex search over the dumped bytes, with context;
//! - `strings`: argv and environment, read from the process's own memory between
//!   `mm_arg_start..mm_arg_end` and `mm_env_start..mm_env_end`.
//!
//! All of it reads through `ProcessMemory`, so bytes come straight from the mmapped pages
//! images (and parents) without a copy, except where a read crosses two runs.

mod search;
mod strings;
mod table;

pub use search::{Needle, search};
pub use strings::read_strings;
pub use table::table;

use crate::analyse::vma::{Vma, VmaKind};

/// Which VMAs a command looks at.
#[derive(Debug, Clone, Default)]
pub struct VmaFilter {
    /// Kinds to keep (empty: all).
    pub kinds: Vec<VmaKind>,
    /// Protection bits that must all be set.
    pub prot: u32,
    /// Only VMAs overlapping this address range.
    pub within: Option<std::ops::Range<u64>>,
}

impl VmaFilter {
    pub fn accepts(&self, vma: &Vma) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&vma.kind))
            && vma.prot & self.prot == self.prot
            && self
                .within
                .as_ref()
                .is_none_or(|range| vma.start < range.end && range.start < vma.end)
    }
}
