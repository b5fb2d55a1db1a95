//! The per-VMA table of `imgtool mem`.

use serde::Serialize;

use super::VmaFilter;
use crate::analyse::diff::hex;
use crate::analyse::memory::{Origin, PAGE_SIZE, ProcessMemory};

/// One VMA and where its pages are.
#[derive(Debug, Clone, Serialize)]
pub struct VmaRow {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    pub size: u64,
    pub prot: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Pages the images hold bytes for (pages image or parents).
    pub resident: u64,
    /// Of those, pages in this set's pages image.
    pub in_pages: u64,
    /// Of those, pages in a parent set.
    pub in_parent: u64,
    /// Pages marked lazy: on a page server, not in the images.
    pub lazy: u64,
    /// Pages not dumped: zero-filled when anonymous, from the file otherwise.
    pub not_dumped: u64,
    /// `zero` or `file`: what a page that was not dumped holds.
    pub not_dumped_is: &'static str,
}

/// Rows for the VMAs `filter` accepts.
pub fn table(memory: &ProcessMemory<'_>, filter: &VmaFilter) -> Vec<VmaRow> {
    let page = PAGE_SIZE as u64;
    memory
        .vmas
        .iter()
        .filter(|vma| filter.accepts(vma))
        .map(|vma| {
            let mut row = VmaRow {
                start: vma.start,
                end: vma.end,
                size: vma.size(),
                prot: vma.prot_string(),
                kind: vma.kind.to_string(),
                path: vma.path.clone(),
                resident: 0,
                in_pages: 0,
                in_parent: 0,
                lazy: 0,
                not_dumped: 0,
                not_dumped_is: if vma.kind.is_anonymous() {
                    "zero"
                } else {
                    "file"
                },
            };
            for run in memory.runs_in(vma.start..vma.end) {
                let from = run.vaddr.max(vma.start);
                let to = run.end().min(vma.end);
                let pages = to.saturating_sub(from) / page;
                match run.origin {
                    Origin::Pages => row.in_pages += pages,
                    Origin::Parent { .. } => row.in_parent += pages,
                    Origin::Lazy => row.lazy += pages,
                }
                if run.bytes.is_some() {
                    row.resident += pages;
                }
            }
            row.not_dumped =
                (vma.size() / page).saturating_sub(row.in_pages + row.in_parent + row.lazy);
            row
        })
        .collect()
}
