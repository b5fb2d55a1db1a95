//! Reading a process's dumped memory by virtual address, across pre-dump parent chains.
//!
//! A `MemoryView` joins a pagemap with its mapped `pages-N.img`, and — when the pagemap has
//! `PE_PARENT` runs — with the same pagemap in `parent/`, `parent/parent/`, ... (the chain a
//! pre-dump series leaves behind). A lookup walks the layers from the newest: a present run
//! answers with a slice of the mapped pages image (never a copy), a parent run defers to the
//! next layer, a lazy run says the bytes must come from a page server.
//!
//! Everything that could make a lookup fail on bad input is checked when the view is opened:
//! each pages image must be long enough for its pagemap's present runs, the chain must not
//! loop (directories are compared after resolving symlinks) and is at most
//! `MAX_PARENT_DEPTH` deep, and every layer with parent runs must have a parent.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::pagemap::{PAGE_SIZE, PageRun, Pagemap, PagemapError};

/// Deepest parent chain followed.
pub const MAX_PARENT_DEPTH: usize = 64;

/// Which pagemap of an image directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagemapId {
    /// `pagemap-<pid>.img`: a process's private memory.
    Pid(u32),
    /// `pagemap-shmem-<shmid>.img`: a shared memory segment.
    Shmem(u64),
}

impl PagemapId {
    /// The pagemap's file name.
    pub fn file_name(self) -> String {
        match self {
            PagemapId::Pid(pid) => format!("pagemap-{pid}.img"),
            PagemapId::Shmem(id) => format!("pagemap-shmem-{id}.img"),
        }
    }
}

/// Errors of opening or reading a memory view.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error("cannot open pages image {path}")]
    Pages {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pagemap {pagemap}, entry {index}: its run ends at byte {needed} of {pages}, which has \
         only {size} bytes"
    )]
    PagesTooShort {
        pagemap: PathBuf,
        pages: PathBuf,
        index: usize,
        needed: u64,
        size: u64,
    },
    #[error("pagemap {pagemap} has runs in the parent, but {parent} does not exist")]
    MissingParent { pagemap: PathBuf, parent: PathBuf },
    #[error("cannot resolve parent directory {path}")]
    Parent {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parent chain loops: {dir} is its own ancestor")]
    ParentCycle { dir: PathBuf },
    #[error("parent chain from {dir} is deeper than {MAX_PARENT_DEPTH} levels")]
    ParentTooDeep { dir: PathBuf },
    #[error("pagemap {pagemap} says {vaddr:#x} is in the parent, but the oldest layer lacks it")]
    ParentLacksPage { pagemap: PathBuf, vaddr: u64 },
    #[error("{len} bytes at {vaddr:#x} are not all in the pages images ({what} at {at:#x})")]
    NotReadable {
        vaddr: u64,
        len: u64,
        what: &'static str,
        at: u64,
    },
}

/// A pagemap together with its mapped pages image.
#[derive(Debug)]
struct Layer {
    dir: PathBuf,
    pagemap: Pagemap,
    pages_path: PathBuf,
    pages: Option<Mmap>,
}

impl Layer {
    fn open(dir: &Path, id: PagemapId) -> Result<Self, MemoryError> {
        let pagemap = Pagemap::open(dir.join(id.file_name()))?;
        let pages_path = dir.join(pagemap.pages_file_name());
        let needed = pagemap.present_pages() * PAGE_SIZE;
        let pages = if needed == 0 {
            None
        } else {
            Some(map_pages(&pages_path)?)
        };

        let size = pages.as_ref().map_or(0, |m| m.len() as u64);
        if needed > size {
            let first_bad = pagemap
                .runs()
                .iter()
                .filter(|r| r.pages_offset.is_some_and(|o| o + r.len_bytes() > size))
                .min_by_key(|r| r.entry_index)
                .expect("a run ends past the size when the total does");
            return Err(MemoryError::PagesTooShort {
                pagemap: pagemap.path().to_path_buf(),
                pages: pages_path,
                index: first_bad.entry_index,
                needed: first_bad.pages_offset.unwrap_or(0) + first_bad.len_bytes(),
                size,
            });
        }
        Ok(Layer {
            dir: dir.to_path_buf(),
            pagemap,
            pages_path,
            pages,
        })
    }

    fn data(&self, run: &PageRun, from: u64, len: u64) -> &[u8] {
        let start = (run.pages_offset.expect("present run") + (from - run.vaddr)) as usize;
        let pages = self
            .pages
            .as_deref()
            .expect("present runs have a pages image");
        &pages[start..start + len as usize]
    }
}

fn map_pages(path: &Path) -> Result<Mmap, MemoryError> {
    let err = |source| MemoryError::Pages {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    // SAFETY: read-only private mapping of an image file; images are not rewritten while read
    // (CRIU's --auto-dedup punches holes, which read back as zeros and cannot fault).
    unsafe { Mmap::map(&file) }.map_err(err)
}

/// Where the bytes of a segment are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// In a pages image, at parent depth `depth` (0 = this directory).
    Data { bytes: &'a [u8], depth: usize },
    /// Not in any pages image: a lazy run (fetch from the page server).
    Lazy,
    /// Not dumped at all (no run covers it).
    Absent,
}

/// A contiguous range of addresses with one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub vaddr: u64,
    pub len: u64,
    pub source: Source<'a>,
}

/// A process's (or shmem segment's) dumped memory, addressable by virtual address.
#[derive(Debug)]
pub struct MemoryView {
    layers: Vec<Layer>,
}

impl MemoryView {
    /// Opens pagemap `id` in `dir` and, if it needs one, its parent chain.
    pub fn open(dir: impl AsRef<Path>, id: PagemapId) -> Result<Self, MemoryError> {
        let dir = dir.as_ref();
        let mut layers = vec![Layer::open(dir, id)?];
        let mut seen = vec![canonical(dir)?];

        while layers
            .last()
            .expect("at least one layer")
            .pagemap
            .has_parent_runs()
        {
            let child = layers.last().expect("at least one layer");
            let parent = child.dir.join("parent");
            if !parent.exists() {
                return Err(MemoryError::MissingParent {
                    pagemap: child.pagemap.path().to_path_buf(),
                    parent,
                });
            }
            let real = canonical(&parent)?;
            if seen.contains(&real) {
                return Err(MemoryError::ParentCycle { dir: real });
            }
            if layers.len() > MAX_PARENT_DEPTH {
                return Err(MemoryError::ParentTooDeep {
                    dir: dir.to_path_buf(),
                });
            }
            // Continue from the resolved path: nested `parent/parent/...` would hit the
            // kernel's limit on symlinks per lookup (40) long before our depth limit.
            layers.push(Layer::open(&real, id)?);
            seen.push(real);
        }
        Ok(MemoryView { layers })
    }

    /// Opens `pagemap-<pid>.img` in `dir`.
    pub fn open_pid(dir: impl AsRef<Path>, pid: u32) -> Result<Self, MemoryError> {
        Self::open(dir, PagemapId::Pid(pid))
    }

    /// The newest layer's pagemap.
    pub fn pagemap(&self) -> &Pagemap {
        &self.layers[0].pagemap
    }

    /// Pagemaps of the chain, newest first.
    pub fn chain(&self) -> impl Iterator<Item = (&Path, &Pagemap)> {
        self.layers.iter().map(|l| (l.dir.as_path(), &l.pagemap))
    }

    /// Number of layers (1 without parents).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Where a slice handed out by this view lives on disk: the pages image of layer `depth`
    /// and the byte offset in it. For callers that `mmap` or `preadv` the file themselves.
    pub fn file_offset(&self, depth: usize, bytes: &[u8]) -> Option<(&Path, u64)> {
        let layer = self.layers.get(depth)?;
        let pages = layer.pages.as_deref()?;
        let base = pages.as_ptr() as usize;
        let at = (bytes.as_ptr() as usize).checked_sub(base)?;
        (at + bytes.len() <= pages.len()).then_some((layer.pages_path.as_path(), at as u64))
    }

    /// The page holding `vaddr`: its 4096 bytes, or why there are none. Allocation-free, for
    /// per-fault lookups.
    pub fn page(&self, vaddr: u64) -> Result<Source<'_>, MemoryError> {
        let start = vaddr - vaddr % PAGE_SIZE;
        for (depth, layer) in self.layers.iter().enumerate() {
            let Some(run) = layer.pagemap.find(start) else {
                if depth == 0 {
                    return Ok(Source::Absent);
                }
                return Err(MemoryError::ParentLacksPage {
                    pagemap: self.layers[depth - 1].pagemap.path().to_path_buf(),
                    vaddr: start,
                });
            };
            if run.is_present() {
                return Ok(Source::Data {
                    bytes: layer.data(run, start, PAGE_SIZE),
                    depth,
                });
            }
            if !run.in_parent() {
                return Ok(Source::Lazy);
            }
        }
        // Not reached: `open` follows the chain until a layer has no parent runs.
        Err(MemoryError::ParentLacksPage {
            pagemap: self.layers[self.layers.len() - 1]
                .pagemap
                .path()
                .to_path_buf(),
            vaddr: start,
        })
    }

    /// The sources of `len` bytes at `vaddr`, split wherever the source changes.
    pub fn segments(&self, vaddr: u64, len: u64) -> Result<Vec<Segment<'_>>, MemoryError> {
        let mut out = Vec::new();
        self.resolve(0, vaddr, len, &mut out)?;
        Ok(out)
    }

    /// Every run of the newest pagemap with its parents resolved, in address order.
    pub fn resolved_runs(&self) -> Result<Vec<Segment<'_>>, MemoryError> {
        let mut out = Vec::new();
        for run in self.pagemap().runs() {
            self.resolve(0, run.vaddr, run.len_bytes(), &mut out)?;
        }
        Ok(out)
    }

    /// Copies `buf.len()` bytes at `vaddr` (for small reads; large ones should use `segments`).
    pub fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let mut at = 0usize;
        for seg in self.segments(vaddr, len)? {
            let what = match seg.source {
                Source::Data { bytes, .. } => {
                    buf[at..at + bytes.len()].copy_from_slice(bytes);
                    at += bytes.len();
                    continue;
                }
                Source::Lazy => "lazy run",
                Source::Absent => "no run",
            };
            return Err(MemoryError::NotReadable {
                vaddr,
                len,
                what,
                at: seg.vaddr,
            });
        }
        Ok(())
    }

    /// Reads a little-endian u64 at `vaddr`.
    pub fn read_u64(&self, vaddr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn resolve<'a>(
        &'a self,
        depth: usize,
        vaddr: u64,
        len: u64,
        out: &mut Vec<Segment<'a>>,
    ) -> Result<(), MemoryError> {
        let layer = &self.layers[depth];
        let end = vaddr.saturating_add(len);
        let mut cur = vaddr;
        while cur < end {
            let Some(run) = layer.pagemap.find_from(cur) else {
                self.absent(depth, cur, end - cur, out)?;
                break;
            };
            if run.vaddr > cur {
                let gap_end = run.vaddr.min(end);
                self.absent(depth, cur, gap_end - cur, out)?;
                cur = gap_end;
                continue;
            }
            let seg_end = run.end().min(end);
            let seg_len = seg_end - cur;
            if run.is_present() {
                out.push(Segment {
                    vaddr: cur,
                    len: seg_len,
                    source: Source::Data {
                        bytes: layer.data(run, cur, seg_len),
                        depth,
                    },
                });
            } else if run.in_parent() {
                self.resolve(depth + 1, cur, seg_len, out)?;
            } else {
                out.push(Segment {
                    vaddr: cur,
                    len: seg_len,
                    source: Source::Lazy,
                });
            }
            cur = seg_end;
        }
        Ok(())
    }

    /// A range no run of layer `depth` covers: absent at the top, an error below it (the
    /// child promised the pages were in the parent).
    fn absent<'a>(
        &'a self,
        depth: usize,
        vaddr: u64,
        len: u64,
        out: &mut Vec<Segment<'a>>,
    ) -> Result<(), MemoryError> {
        if depth > 0 {
            return Err(MemoryError::ParentLacksPage {
                pagemap: self.layers[depth - 1].pagemap.path().to_path_buf(),
                vaddr,
            });
        }
        out.push(Segment {
            vaddr,
            len,
            source: Source::Absent,
        });
        Ok(())
    }
}

fn canonical(dir: &Path) -> Result<PathBuf, MemoryError> {
    dir.canonicalize().map_err(|source| MemoryError::Parent {
        path: dir.to_path_buf(),
        source,
    })
}
