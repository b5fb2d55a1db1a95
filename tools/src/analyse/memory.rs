//! A dumped process's memory as the images describe it.
//!
//! `ProcessMemory` joins the VMAs of `mm-PID.img` with the dumped pages, which
//! `cryo_format::MemoryView` resolves from `pagemap-PID.img`, `pages-N.img` and the `parent`
//! chain. Loading resolves every pagemap entry to *where its bytes live* once;
//! afterwards reading, searching and hashing are plain slice work over the mmapped pages
//! images, never a copy unless bytes must be joined across two runs.
//!
//! Pages that are in a VMA but in no pagemap entry were not dumped: anonymous memory reads as
//! zeroes on restore, file-backed memory comes from the file. Such pages are reported as such,
//! never invented.

use std::borrow::Cow;
use std::ops::Range;

use serde::Serialize;

use crate::analyse::vma::Vma;

/// Size of a page in the images (x86-64).
pub const PAGE_SIZE: usize = 4096;

/// Where a dumped page's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// In this image set's pages image.
    Pages,
    /// In an ancestor image set, `depth` `parent` links up (1 = the direct parent).
    Parent { depth: u32 },
    /// Marked lazy and not written: the bytes are on a page server, not in the images.
    Lazy,
}

/// A run of consecutive dumped pages with one origin.
#[derive(Debug, Clone, Copy)]
pub struct ResidentRun<'a> {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// `nr_pages * PAGE_SIZE` bytes, or `None` when the images do not hold them.
    pub bytes: Option<&'a [u8]>,
    pub origin: Origin,
}

impl ResidentRun<'_> {
    /// The first address past the run.
    pub fn end(&self) -> u64 {
        self.vaddr
            .saturating_add(self.nr_pages.saturating_mul(PAGE_SIZE as u64))
    }
}

/// Bytes of one contiguous stretch of dumped memory.
#[derive(Debug, Clone)]
pub struct Span<'a> {
    pub vaddr: u64,
    pub bytes: Cow<'a, [u8]>,
}

/// A piece of an address range: bytes in the images, or a hole.
#[derive(Debug, Clone)]
pub enum Piece<'a> {
    Bytes { vaddr: u64, bytes: &'a [u8] },
    Missing { vaddr: u64, len: u64 },
}

/// One process's memory: its VMAs and its dumped pages, both sorted by address.
#[derive(Debug, Clone)]
pub struct ProcessMemory<'a> {
    pub pid: u32,
    pub vmas: Vec<Vma>,
    pub runs: Vec<ResidentRun<'a>>,
    /// `mm_arg_start..mm_arg_end`: the argv strings.
    pub arg: Range<u64>,
    /// `mm_env_start..mm_env_end`: the environment strings.
    pub env: Range<u64>,
}

impl<'a> ProcessMemory<'a> {
    /// The VMA holding `vaddr`, if any.
    pub fn vma_at(&self, vaddr: u64) -> Option<&Vma> {
        let index = self.vmas.partition_point(|vma| vma.end <= vaddr);
        self.vmas.get(index).filter(|vma| vma.start <= vaddr)
    }

    /// Runs that overlap `range`, in address order.
    pub fn runs_in(&self, range: Range<u64>) -> impl Iterator<Item = &ResidentRun<'a>> {
        let first = self.runs.partition_point(|run| run.end() <= range.start);
        self.runs[first..]
            .iter()
            .take_while(move |run| run.vaddr < range.end)
    }

    /// Splits `start..start+len` into pieces that the images hold and holes.
    pub fn pieces(&self, start: u64, len: u64) -> Vec<Piece<'a>> {
        let end = start.saturating_add(len);
        let mut pieces = Vec::new();
        let mut cursor = start;
        for run in self.runs_in(start..end) {
            let Some(bytes) = run.bytes else { continue };
            let from = run.vaddr.max(cursor);
            let to = run.end().min(end);
            if from >= to {
                continue;
            }
            if from > cursor {
                pieces.push(Piece::Missing {
                    vaddr: cursor,
                    len: from - cursor,
                });
            }
            let offset = (from - run.vaddr) as usize;
            pieces.push(Piece::Bytes {
                vaddr: from,
                bytes: &bytes[offset..offset + (to - from) as usize],
            });
            cursor = to;
        }
        if cursor < end {
            pieces.push(Piece::Missing {
                vaddr: cursor,
                len: end - cursor,
            });
        }
        pieces
    }

    /// The bytes of `start..start+len`, or the first address the images do not hold.
    pub fn read(&self, start: u64, len: u64) -> Result<Cow<'a, [u8]>, u64> {
        let pieces = self.pieces(start, len);
        if let [Piece::Bytes { bytes, .. }] = pieces.as_slice() {
            return Ok(Cow::Borrowed(*bytes));
        }
        let mut joined = Vec::with_capacity(len.min(1 << 30) as usize);
        for piece in pieces {
            match piece {
                Piece::Bytes { bytes, .. } => joined.extend_from_slice(bytes),
                Piece::Missing { vaddr, .. } => return Err(vaddr),
            }
        }
        Ok(Cow::Owned(joined))
    }

    /// Maximal stretches of consecutive dumped bytes (runs joined where addresses touch),
    /// restricted to `filter`'s VMAs. A stretch never crosses a VMA boundary. Without VMAs
    /// (a pre-dump has no mm image) every dumped byte is taken.
    pub fn spans(&self, filter: impl Fn(&Vma) -> bool) -> Vec<Span<'a>> {
        let ranges: Vec<Range<u64>> = if self.vmas.is_empty() {
            let everything = Range {
                start: 0,
                end: u64::MAX,
            };
            vec![everything]
        } else {
            self.vmas
                .iter()
                .filter(|vma| filter(vma))
                .map(|vma| vma.start..vma.end)
                .collect()
        };
        let mut spans = Vec::new();
        for range in ranges {
            let mut current: Option<Span<'a>> = None;
            for run in self.runs_in(range.clone()) {
                let Some(bytes) = run.bytes else { continue };
                let from = run.vaddr.max(range.start);
                let to = run.end().min(range.end);
                if from >= to {
                    continue;
                }
                let offset = (from - run.vaddr) as usize;
                let slice = &bytes[offset..offset + (to - from) as usize];
                match current.as_mut() {
                    Some(span) if span.vaddr + span.bytes.len() as u64 == from => {
                        span.bytes.to_mut().extend_from_slice(slice);
                    }
                    _ => {
                        spans.extend(current.take());
                        current = Some(Span {
                            vaddr: from,
                            bytes: Cow::Borrowed(slice),
                        });
                    }
                }
            }
            spans.extend(current);
        }
        spans
    }
}
