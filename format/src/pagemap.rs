//! Parsing `pagemap-*.img` into a sorted index of page runs.
//!
//! A pagemap image is a `pagemap_head` (which `pages-<pages_id>.img` holds the data) followed
//! by `pagemap_entry`s, each a run of pages at a virtual address (an offset in the segment,
//! for `pagemap-shmem-*`). Only runs flagged `PE_PRESENT` have bytes in the pages image, and
//! they are stored back to back in entry order, so a run's offset in the pages image is the
//! sum of the present runs before it. We compute those offsets once, in file order, then sort
//! the runs by address for binary search.
//!
//! Old images are normalised the way CRIU does: `in_parent` becomes `PE_PARENT`, a missing
//! `flags` means `PE_PRESENT`, a missing `nr_pages` (field 5) falls back to `compat_nr_pages`
//! (field 2). Entries with the 2026 compression fields (6, 7, 8, or `PE_PAYLOAD_ALIGNED`) break
//! the offset rule above, so they are refused with an error naming the entry and the field.
//!
//! Fields are read with the wire scanner, not prost: parsing allocates only the run index.

use std::path::{Path, PathBuf};

use crate::image::{ImageError, ImageFile};
use crate::magic::well_known;
use crate::wire;

/// Size of a page in every image cryo reads or writes (x86-64).
pub const PAGE_SIZE: u64 = 4096;

/// Pages are in the parent image directory.
pub const PE_PARENT: u32 = 1 << 0;
/// Pages may be served lazily (with `PE_PRESENT`: also in the pages image).
pub const PE_LAZY: u32 = 1 << 1;
/// Pages are in this directory's pages image.
pub const PE_PRESENT: u32 = 1 << 2;
/// criu-dev 2026: the payload starts at a page boundary (compressed images only).
pub const PE_PAYLOAD_ALIGNED: u32 = 1 << 3;

/// Errors of parsing a pagemap.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("pagemap {path} is empty: it lacks its pagemap_head")]
    MissingHead { path: PathBuf },
    #[error(
        "pagemap {path}, entry {index}: field {field} belongs to compressed pagemaps \
         (criu-dev 2026 --compress), which cryo does not read"
    )]
    Compressed {
        path: PathBuf,
        index: usize,
        field: &'static str,
    },
    #[error("pagemap {path}, entry {index}: unknown flags {flags:#x}")]
    UnknownFlags {
        path: PathBuf,
        index: usize,
        flags: u32,
    },
    #[error("pagemap {path}, entry {index}: PE_PRESENT and PE_PARENT are both set at {vaddr:#x}")]
    PresentAndParent {
        path: PathBuf,
        index: usize,
        vaddr: u64,
    },
    #[error("pagemap {path}, entry {index}: address {vaddr:#x} is not page aligned")]
    Unaligned {
        path: PathBuf,
        index: usize,
        vaddr: u64,
    },
    #[error(
        "pagemap {path}, entry {index}: {nr_pages} pages at {vaddr:#x} overflow the address space"
    )]
    Overflow {
        path: PathBuf,
        index: usize,
        vaddr: u64,
        nr_pages: u64,
    },
    #[error(
        "pagemap {path}, entry {index}: run at {vaddr:#x} overlaps the run ending at {prev_end:#x}"
    )]
    Overlap {
        path: PathBuf,
        index: usize,
        vaddr: u64,
        prev_end: u64,
    },
}

/// One run of pages of a pagemap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First address (or segment offset, for shmem).
    pub vaddr: u64,
    /// Number of pages.
    pub nr_pages: u64,
    /// `PE_*` flags after normalisation.
    pub flags: u32,
    /// Byte offset of the run's data in the pages image, when `PE_PRESENT`.
    pub pages_offset: Option<u64>,
    /// Index of the pagemap entry (1-based: entry 0 is the head).
    pub entry_index: usize,
}

impl PageRun {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.vaddr + self.nr_pages * PAGE_SIZE
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.nr_pages * PAGE_SIZE
    }

    /// Whether `addr` is inside the run.
    pub fn contains(&self, addr: u64) -> bool {
        self.vaddr <= addr && addr < self.end()
    }

    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }

    pub fn in_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }

    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }
}

/// A parsed pagemap: which pages image, and the runs sorted by address.
#[derive(Debug, Clone)]
pub struct Pagemap {
    path: PathBuf,
    pages_id: u32,
    runs: Vec<PageRun>,
    present_pages: u64,
}

/// The raw fields of one `pagemap_entry`.
#[derive(Debug, Default, Clone, Copy)]
struct EntryFields {
    vaddr: u64,
    compat_nr_pages: u64,
    in_parent: Option<bool>,
    flags: Option<u32>,
    nr_pages: Option<u64>,
    compressed: Option<&'static str>,
}

fn scan_entry(payload: &[u8]) -> Result<EntryFields, wire::WireError> {
    let mut e = EntryFields::default();
    for field in wire::fields(payload) {
        let field = field?;
        let int = field.value.as_u64();
        match (field.number, int) {
            (1, Some(v)) => e.vaddr = v,
            (2, Some(v)) => e.compat_nr_pages = v & u64::from(u32::MAX),
            (3, Some(v)) => e.in_parent = Some(v != 0),
            (4, Some(v)) => e.flags = Some(v as u32),
            (5, Some(v)) => e.nr_pages = Some(v),
            (6, _) => e.compressed = Some("compressed_size"),
            (7, _) => e.compressed = Some("total_compressed_size"),
            (8, _) => e.compressed = Some("region_pages"),
            _ => {}
        }
    }
    Ok(e)
}

impl Pagemap {
    /// Opens and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PagemapError> {
        let image = ImageFile::open_expect(path, well_known::pagemap())?;
        Self::parse(&image)
    }

    /// Parses an open pagemap image.
    pub fn parse(image: &ImageFile) -> Result<Self, PagemapError> {
        let path = image.path().to_path_buf();
        let mut entries = image.entries();
        let head = entries
            .next()
            .transpose()?
            .ok_or_else(|| PagemapError::MissingHead { path: path.clone() })?;
        image.check(&head)?;
        let wire_err = |index, error| ImageError::Wire {
            path: path.clone(),
            index,
            error,
        };
        let pages_id = wire::find_u64(head.payload, 1)
            .map_err(|e| wire_err(0, e))?
            .unwrap_or(0) as u32;

        // A pagemap entry takes at least ~16 bytes; the cap keeps a huge file from reserving
        // memory before its entries prove to be real.
        let mut runs = Vec::with_capacity((image.body().len() / 16).min(1 << 16));
        let mut offset = 0u64;
        for entry in entries {
            let entry = entry?;
            image.check(&entry)?;
            let index = entry.index;
            let e = scan_entry(entry.payload).map_err(|error| wire_err(index, error))?;
            let run = normalise(&path, index, e)?;
            let run = if run.is_present() {
                let at = offset;
                offset = offset
                    .checked_add(run.len_bytes())
                    .ok_or_else(|| overflow(&path, index, &run))?;
                PageRun {
                    pages_offset: Some(at),
                    ..run
                }
            } else {
                run
            };
            // An empty run covers nothing and consumes nothing; keeping it would put an
            // entry in the index that no address can find.
            if run.nr_pages > 0 {
                runs.push(run);
            }
        }

        runs.sort_by_key(|r| r.vaddr);
        for pair in runs.windows(2) {
            if pair[1].vaddr < pair[0].end() {
                return Err(PagemapError::Overlap {
                    path,
                    index: pair[1].entry_index,
                    vaddr: pair[1].vaddr,
                    prev_end: pair[0].end(),
                });
            }
        }
        Ok(Pagemap {
            path,
            pages_id,
            present_pages: offset / PAGE_SIZE,
            runs,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `N` of the `pages-N.img` that holds the present runs.
    pub fn pages_id(&self) -> u32 {
        self.pages_id
    }

    /// File name of the pages image.
    pub fn pages_file_name(&self) -> String {
        format!("pages-{}.img", self.pages_id)
    }

    /// The runs, sorted by address.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Pages stored in this directory's pages image.
    pub fn present_pages(&self) -> u64 {
        self.present_pages
    }

    /// Whether any run lives in the parent image directory.
    pub fn has_parent_runs(&self) -> bool {
        self.runs.iter().any(PageRun::in_parent)
    }

    /// The run containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&PageRun> {
        let i = self.runs.partition_point(|r| r.vaddr <= addr);
        self.runs[..i].last().filter(|r| r.contains(addr))
    }

    /// The first run ending after `addr` (the run containing it, or the next one).
    pub fn find_from(&self, addr: u64) -> Option<&PageRun> {
        let i = self.runs.partition_point(|r| r.end() <= addr);
        self.runs.get(i)
    }
}

fn overflow(path: &Path, index: usize, run: &PageRun) -> PagemapError {
    PagemapError::Overflow {
        path: path.to_path_buf(),
        index,
        vaddr: run.vaddr,
        nr_pages: run.nr_pages,
    }
}

fn normalise(path: &Path, index: usize, e: EntryFields) -> Result<PageRun, PagemapError> {
    if let Some(field) = e.compressed {
        return Err(PagemapError::Compressed {
            path: path.to_path_buf(),
            index,
            field,
        });
    }
    let mut flags = match (e.in_parent, e.flags) {
        (Some(true), f) => f.unwrap_or(0) | PE_PARENT,
        (_, Some(f)) => f,
        (_, None) => PE_PRESENT,
    };
    if flags & PE_PAYLOAD_ALIGNED != 0 {
        return Err(PagemapError::Compressed {
            path: path.to_path_buf(),
            index,
            field: "flags (PE_PAYLOAD_ALIGNED)",
        });
    }
    if flags & !(PE_PARENT | PE_LAZY | PE_PRESENT) != 0 {
        return Err(PagemapError::UnknownFlags {
            path: path.to_path_buf(),
            index,
            flags,
        });
    }
    if flags & PE_PRESENT != 0 && flags & PE_PARENT != 0 {
        return Err(PagemapError::PresentAndParent {
            path: path.to_path_buf(),
            index,
            vaddr: e.vaddr,
        });
    }
    if !e.vaddr.is_multiple_of(PAGE_SIZE) {
        return Err(PagemapError::Unaligned {
            path: path.to_path_buf(),
            index,
            vaddr: e.vaddr,
        });
    }
    flags &= PE_PARENT | PE_LAZY | PE_PRESENT;

    let run = PageRun {
        vaddr: e.vaddr,
        nr_pages: e.nr_pages.unwrap_or(e.compat_nr_pages),
        flags,
        pages_offset: None,
        entry_index: index,
    };
    let fits = run
        .nr_pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| run.vaddr.checked_add(len));
    if fits.is_none() {
        return Err(overflow(path, index, &run));
    }
    Ok(run)
}

/// Encodes a `pagemap_entry` the way CRIU 4.2 does: vaddr, compat_nr_pages = 0, flags,
/// nr_pages.
pub fn encode_entry(out: &mut Vec<u8>, vaddr: u64, nr_pages: u64, flags: u32) {
    encode_entry_with_compat(out, vaddr, nr_pages, flags, 0);
}

/// Encodes a `pagemap_entry` that CRIU before 4.2 also reads: field 2 carries the page count
/// too (when it fits a u32). CRIU 4.2 and cryo prefer field 5 when both are present.
pub fn encode_entry_compat(out: &mut Vec<u8>, vaddr: u64, nr_pages: u64, flags: u32) {
    let compat = u32::try_from(nr_pages).unwrap_or(0);
    encode_entry_with_compat(out, vaddr, nr_pages, flags, compat);
}

fn encode_entry_with_compat(out: &mut Vec<u8>, vaddr: u64, nr_pages: u64, flags: u32, compat: u32) {
    wire::put_varint_field(out, 1, vaddr);
    wire::put_varint_field(out, 2, u64::from(compat));
    wire::put_varint_field(out, 4, u64::from(flags));
    wire::put_varint_field(out, 5, nr_pages);
}

/// Encodes a `pagemap_head`.
pub fn encode_head(out: &mut Vec<u8>, pages_id: u32) {
    wire::put_varint_field(out, 1, u64::from(pages_id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_varint_field;

    fn fields(f: impl FnOnce(&mut Vec<u8>)) -> EntryFields {
        let mut buf = Vec::new();
        f(&mut buf);
        scan_entry(&buf).expect("well-formed")
    }

    #[test]
    fn old_entries_without_flags_or_nr_pages_are_present_runs_of_compat_pages() {
        let e = fields(|b| {
            put_varint_field(b, 1, 0x1000);
            put_varint_field(b, 2, 3);
        });
        let run = normalise(Path::new("p"), 1, e).expect("valid");
        assert_eq!((run.nr_pages, run.flags), (3, PE_PRESENT));
    }

    #[test]
    fn in_parent_maps_to_pe_parent_and_nr_pages_wins_over_compat() {
        let e = fields(|b| {
            put_varint_field(b, 1, 0x2000);
            put_varint_field(b, 2, 1);
            put_varint_field(b, 3, 1);
            put_varint_field(b, 5, 7);
        });
        let run = normalise(Path::new("p"), 1, e).expect("valid");
        assert_eq!((run.nr_pages, run.flags), (7, PE_PARENT));
    }

    #[test]
    fn compression_fields_and_aligned_flag_are_refused() {
        let e = fields(|b| {
            put_varint_field(b, 1, 0);
            put_varint_field(b, 7, 100);
        });
        let err = normalise(Path::new("p"), 4, e).unwrap_err();
        assert!(matches!(
            err,
            PagemapError::Compressed {
                index: 4,
                field: "total_compressed_size",
                ..
            }
        ));
        let e = fields(|b| {
            put_varint_field(b, 1, 0);
            put_varint_field(b, 4, u64::from(PE_PRESENT | PE_PAYLOAD_ALIGNED));
        });
        assert!(matches!(
            normalise(Path::new("p"), 1, e),
            Err(PagemapError::Compressed { .. })
        ));
    }

    #[test]
    fn present_with_parent_unaligned_and_overflowing_runs_are_errors() {
        let e = fields(|b| {
            put_varint_field(b, 1, 0);
            put_varint_field(b, 4, u64::from(PE_PRESENT | PE_PARENT));
        });
        assert!(matches!(
            normalise(Path::new("p"), 1, e),
            Err(PagemapError::PresentAndParent { .. })
        ));
        let e = fields(|b| put_varint_field(b, 1, 0x1001));
        assert!(matches!(
            normalise(Path::new("p"), 1, e),
            Err(PagemapError::Unaligned { vaddr: 0x1001, .. })
        ));
        let e = fields(|b| {
            put_varint_field(b, 1, u64::MAX - 0xfff);
            put_varint_field(b, 5, 2);
        });
        assert!(matches!(
            normalise(Path::new("p"), 1, e),
            Err(PagemapError::Overflow { .. })
        ));
    }
}
