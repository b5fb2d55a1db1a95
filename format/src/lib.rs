//! cryo's image format: CRIU v1.1 images, read zero-copy and written as a stream.
//!
//! The bytes on disk are CRIU's (4.2): `inventory.img` starts with its own magic, every other
//! framed image with a first magic (common `0x54564319`, service `0x55105940`) and a type
//! magic, then entries of `u32 length + protobuf message [+ extra payload]`; `pages-N.img`
//! is raw pages addressed through `pagemap-*.img`.
//!
//! # The API, by layer
//!
//! | module | what | main items |
//! |---|---|---|
//! | [`magic`] | every magic of CRIU's `magic.h`: header kind, message, extra payload | [`magic::by_value`], [`magic::by_name`], [`magic::well_known`] |
//! | [`schema`] | prost structs of every message, and the descriptor pool | `schema::CoreEntry`, `schema::descriptor_pool()` |
//! | [`image`] | one image file, mmapped; borrowed entries; typed decode with `required` checks | [`ImageFile`], [`RawEntry`], [`ImageError`] |
//! | [`writer`] | one image file written through a temp file, fsynced, renamed | [`ImageWriter`], [`WriteError`] |
//! | [`pagemap`] | a pagemap as a sorted index of runs with offsets in the pages image | [`Pagemap`], [`PageRun`], `PE_*` flags |
//! | [`memory`] | memory by virtual address over pages images and `parent` chains | [`MemoryView`], [`Segment`], [`Source`] |
//! | [`pages_writer`] | a pagemap + pages image pair written together | [`PagesWriter`] |
//! | [`imageset`] | an image directory: typed accessors; writer committing the inventory last | [`ImageSet`], [`ImageSetWriter`] |
//! | [`validate`], [`wire`], [`extra`] | required-field checks, the wire scanner, extra payload sizes | |
//!
//! Testing: `tests/` runs every reader and writer on the real CRIU 4.2 fixtures, every
//! bad-input case by its error variant, hand-made parent chains, and `crit` decoding cryo's
//! output. `examples/decode_bench.rs` measures throughput, `benches/crit_anchor.py` the same
//! decoding in CRIU's pycriu for comparison; the repo's `fuzz/` workspace fuzzes the decoder,
//! the pagemap walker and parent chains.
//!
//! Errors are one `thiserror` enum per module; every variant names the file and, where it
//! applies, the entry index, byte offset, field or address.
//!
//! # Example
//!
//! ```no_run
//! use cryo_format::{ImageSet, ImageFile, magic::well_known};
//! use cryo_format::schema::PipeDataEntry;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let set = ImageSet::open("/tmp/dump")?;
//! let root = set.root()?;
//! let mm = set.mm(root.pid)?;
//! let memory = set.memory(root.pid)?; // follows parent/ links of pre-dumps
//! let word = memory.read_u64(mm.vmas[0].start)?;
//! for seg in memory.resolved_runs()? {
//!     // seg.source is Source::Data { bytes, .. } (a slice of the mapped pages-N.img),
//!     // Source::Lazy (ask the page server) or Source::Absent.
//! }
//!
//! // Any image, entry by entry, zero-copy:
//! let image = ImageFile::open_or_empty(set.path("pipes-data.img"), well_known::pipes_data())?;
//! for entry in image.entries() {
//!     let entry = entry?;
//!     let msg: PipeDataEntry = image.decode(&entry)?;
//!     let data: &[u8] = entry.extra.unwrap_or_default();
//! }
//!
//! // Writing: every image is committed on its own; the inventory goes last.
//! let out = ImageSet::create("/tmp/copy")?;
//! out.write_mm(root.pid, &mm)?;
//! let mut pages = out.pages(cryo_format::PagemapId::Pid(root.pid), 1)?;
//! pages.add_pages(0x7f00_0000_0000, &[0u8; 4096], true)?;
//! pages.finish()?;
//! out.finish(set.inventory())?;
//! # Ok(()) }
//! ```

pub mod extra;
pub mod image;
pub mod imageset;
pub mod magic;
pub mod memory;
pub mod pagemap;
pub mod pages_writer;
pub mod schema;
pub mod validate;
pub mod vma;
pub mod wire;
pub mod writer;

pub use image::{Entries, ImageError, ImageFile, RawEntry};
pub use imageset::{ImageSet, ImageSetError, ImageSetWriter};
pub use magic::Magic;
pub use memory::{MemoryError, MemoryView, PagemapId, Segment, Source};
pub use pagemap::{PAGE_SIZE, PageRun, Pagemap, PagemapError};
pub use pages_writer::{PagesSummary, PagesWriteError, PagesWriter};
pub use writer::{ImageWriter, WriteError};
