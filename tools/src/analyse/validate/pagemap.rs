//! A lenient pagemap reader for validation.
//!
//! `cryo_format::Pagemap` refuses a pagemap at its first bad entry, which is right for
//! reading memory. Validation must instead see every entry to list every problem, so this
//! module normalises entries one by one (the way CRIU does: `in_parent` means `PE_PARENT`,
//! absent `flags` mean `PE_PRESENT`, absent `nr_pages` mean `compat_nr_pages`) and leaves the
//! judging to the checks.

use std::path::Path;

use cryo_format::ImageFile;
use cryo_format::magic::well_known;
use cryo_format::pagemap::{PAGE_SIZE, PE_PARENT, PE_PRESENT};
use cryo_format::schema::{PagemapEntry, PagemapHead};

/// One pagemap entry, normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapEntry {
    pub index: usize,
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
}

impl MapEntry {
    pub fn from_entry(index: usize, entry: &PagemapEntry) -> MapEntry {
        let flags = if entry.in_parent == Some(true) {
            entry.flags.unwrap_or(0) | PE_PARENT
        } else {
            entry.flags.unwrap_or(PE_PRESENT)
        };
        MapEntry {
            index,
            vaddr: entry.vaddr,
            nr_pages: entry
                .nr_pages
                .unwrap_or_else(|| u64::from(entry.compat_nr_pages)),
            flags,
        }
    }

    /// The first address past the entry, or `None` when that overflows.
    pub fn end(&self) -> Option<u64> {
        self.nr_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| self.vaddr.checked_add(len))
    }

    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }

    /// Whether the pages are only in the parent.
    pub fn in_parent(&self) -> bool {
        self.flags & PE_PARENT != 0 && !self.is_present()
    }
}

/// The head's `pages_id` and every entry after the head that decodes, or `None` when the
/// image cannot be opened or has no readable head.
pub(crate) fn read_entries(path: &Path) -> Option<(u32, Vec<MapEntry>)> {
    let image = ImageFile::open_expect(path, well_known::pagemap()).ok()?;
    let head = image.entries().next()?.ok()?;
    let head: PagemapHead = image.decode(&head).ok()?;
    let entries = image
        .entries()
        .map_while(Result::ok)
        .filter(|entry| entry.index > 0)
        .filter_map(|entry| {
            let decoded: PagemapEntry = image.decode(&entry).ok()?;
            Some(MapEntry::from_entry(entry.index, &decoded))
        })
        .collect();
    Some((head.pages_id, entries))
}
