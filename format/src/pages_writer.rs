//! Writing a pagemap and its pages image together.
//!
//! The dumper and the page server's export both produce the pair `pagemap-<id>.img` +
//! `pages-<N>.img`. `PagesWriter` keeps the two consistent: each present run's bytes are
//! appended to the pages image in the same order as its pagemap entry, adjacent runs with the
//! same flags are merged (as CRIU does), and runs must come in increasing address order.
//! `finish` commits the pages image first and the pagemap second, so a pagemap on disk
//! always has its data; an unfinished writer removes both temporary files.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::magic::well_known;
use crate::memory::PagemapId;
use crate::pagemap::{self, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::writer::{self, ImageWriter, WriteError};

/// Errors of writing a pagemap + pages pair.
#[derive(Debug, thiserror::Error)]
pub enum PagesWriteError {
    #[error(transparent)]
    Image(#[from] WriteError),
    #[error("cannot write pages image {path}")]
    Pages {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pages for {vaddr:#x}: {len} bytes is not a whole number of pages")]
    PartialPage { vaddr: u64, len: usize },
    #[error("run at {vaddr:#x} is not page aligned")]
    Unaligned { vaddr: u64 },
    #[error("run at {vaddr:#x} starts before the previous run ends ({prev_end:#x})")]
    OutOfOrder { vaddr: u64, prev_end: u64 },
    #[error("run at {vaddr:#x}: flags {flags:#x} are not a valid hole (PE_PARENT or PE_LAZY)")]
    BadHoleFlags { vaddr: u64, flags: u32 },
    #[error("run at {vaddr:#x}: {nr_pages} pages overflow the address space")]
    Overflow { vaddr: u64, nr_pages: u64 },
    #[error("pages source for {vaddr:#x} ended early: {got} of {want} bytes")]
    ShortSource { vaddr: u64, got: u64, want: u64 },
    #[error("pages image {path} holds {len} bytes, its pagemap needs {want}")]
    Size { path: PathBuf, len: u64, want: u64 },
    #[error("run at {vaddr:#x} still lacks {left} bytes of its pages")]
    Owed { vaddr: u64, left: u64 },
    #[error("{len} bytes of pages with no run started for them")]
    Unowed { len: u64 },
    #[error("run at {vaddr:#x}: {len} bytes offered, only {left} left to write")]
    TooMuch { vaddr: u64, len: u64, left: u64 },
}

/// What a finished `PagesWriter` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesSummary {
    pub pagemap: PathBuf,
    pub pages: PathBuf,
    /// Pagemap entries after merging (the head not counted).
    pub entries: usize,
    /// Pages written to the pages image.
    pub present_pages: u64,
}

/// Bytes a run begun with `start_pages` still waits for.
#[derive(Debug, Clone, Copy)]
struct Owed {
    vaddr: u64,
    left: u64,
}

#[derive(Debug, Clone, Copy)]
struct PendingRun {
    vaddr: u64,
    nr_pages: u64,
    flags: u32,
}

/// Streaming writer of `pagemap-<id>.img` + `pages-<pages_id>.img`.
pub struct PagesWriter {
    pagemap: Option<ImageWriter>,
    pages_path: PathBuf,
    pages_temp: PathBuf,
    pages: Option<BufWriter<File>>,
    pending: Option<PendingRun>,
    owed: Option<Owed>,
    prev_end: u64,
    entries: usize,
    present_pages: u64,
    compat_nr_pages: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for PagesWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagesWriter")
            .field("pagemap", &self.pagemap.as_ref().map(ImageWriter::path))
            .field("pages", &self.pages_path)
            .field("present_pages", &self.present_pages)
            .finish()
    }
}

impl PagesWriter {
    /// Starts both files in `dir`.
    pub fn create(
        dir: impl AsRef<Path>,
        id: PagemapId,
        pages_id: u32,
    ) -> Result<Self, PagesWriteError> {
        let dir = dir.as_ref();
        let magic = match id {
            PagemapId::Pid(_) => well_known::pagemap(),
            PagemapId::Shmem(_) => well_known::shmem_pagemap(),
        };
        let mut pagemap = ImageWriter::create(dir.join(id.file_name()), magic)?;
        let mut head = Vec::new();
        pagemap::encode_head(&mut head, pages_id);
        pagemap.write_raw(&head, &[])?;

        let pages_path = dir.join(format!("pages-{pages_id}.img"));
        let pages_temp = writer::temp_path(&pages_path);
        let file = File::create(&pages_temp).map_err(|source| PagesWriteError::Pages {
            path: pages_temp.clone(),
            source,
        })?;
        Ok(PagesWriter {
            pagemap: Some(pagemap),
            pages_path,
            pages_temp,
            pages: Some(BufWriter::with_capacity(1 << 20, file)),
            pending: None,
            owed: None,
            prev_end: 0,
            entries: 0,
            present_pages: 0,
            compat_nr_pages: true,
            scratch: Vec::with_capacity(32),
        })
    }

    /// Whether each run's page count also goes in field 2 (`compat_nr_pages`). On by
    /// default: CRIU before 4.2 (trixie's 4.1, Debian 12's 3.17 and its crit) reads only
    /// field 2, and restores all-zero memory from a pagemap that has 0 there; CRIU 4.2 and
    /// cryo read field 5 when it is present. Off writes 0 there, as CRIU 4.2 does.
    pub fn with_compat_nr_pages(mut self, on: bool) -> Self {
        self.compat_nr_pages = on;
        self
    }

    /// Appends present pages at `vaddr` (`data.len()` a multiple of 4096). `lazy` marks them
    /// lazy-eligible (`PE_LAZY | PE_PRESENT`), as CRIU does for private anonymous memory.
    pub fn add_pages(
        &mut self,
        vaddr: u64,
        data: &[u8],
        lazy: bool,
    ) -> Result<(), PagesWriteError> {
        if !(data.len() as u64).is_multiple_of(PAGE_SIZE) {
            return Err(PagesWriteError::PartialPage {
                vaddr,
                len: data.len(),
            });
        }
        self.check_nothing_owed()?;
        let flags = PE_PRESENT | if lazy { PE_LAZY } else { 0 };
        self.add_run(vaddr, data.len() as u64 / PAGE_SIZE, flags)?;
        self.write_pages(data)
    }

    /// Appends `nr_pages` present pages at `vaddr`, read from `source` (a pipe, a socket).
    pub fn add_pages_from(
        &mut self,
        vaddr: u64,
        nr_pages: u64,
        lazy: bool,
        source: &mut impl Read,
    ) -> Result<(), PagesWriteError> {
        self.start_pages(vaddr, nr_pages, lazy)?;
        self.append_from(nr_pages * PAGE_SIZE, source)
    }

    /// Records `nr_pages` present pages at `vaddr` whose bytes follow in order through
    /// [`Self::append_from`], in as many parts as the source delivers them.
    pub fn start_pages(
        &mut self,
        vaddr: u64,
        nr_pages: u64,
        lazy: bool,
    ) -> Result<(), PagesWriteError> {
        self.check_nothing_owed()?;
        let flags = PE_PRESENT | if lazy { PE_LAZY } else { 0 };
        self.add_run(vaddr, nr_pages, flags)?;
        self.owed = Some(Owed {
            vaddr,
            left: nr_pages * PAGE_SIZE,
        });
        Ok(())
    }

    /// Copies the next `len` bytes of the run begun by [`Self::start_pages`] from
    /// `source` (with `splice` when it is a pipe).
    pub fn append_from(&mut self, len: u64, source: &mut impl Read) -> Result<(), PagesWriteError> {
        let owed = self.owed.as_mut().ok_or(PagesWriteError::Unowed { len })?;
        if len > owed.left {
            return Err(PagesWriteError::TooMuch {
                vaddr: owed.vaddr,
                len,
                left: owed.left,
            });
        }
        let vaddr = owed.vaddr;
        let out = self.pages.as_mut().expect("open until finish");
        let got =
            io::copy(&mut source.take(len), out).map_err(|source| PagesWriteError::Pages {
                path: self.pages_temp.clone(),
                source,
            })?;
        owed.left -= got;
        if got != len {
            return Err(PagesWriteError::ShortSource {
                vaddr,
                got,
                want: len,
            });
        }
        if owed.left == 0 {
            self.owed = None;
        }
        Ok(())
    }

    /// Records `nr_pages` present pages at `vaddr` whose bytes someone else writes into
    /// [`Self::pages_file`] at the returned offset (with `pwrite`, e.g. the tracee
    /// itself). Later runs go after them; the caller must fill the range before
    /// [`Self::finish`], which checks that the pages image has every byte it should.
    pub fn reserve_pages(
        &mut self,
        vaddr: u64,
        nr_pages: u64,
        lazy: bool,
    ) -> Result<u64, PagesWriteError> {
        self.check_nothing_owed()?;
        let flags = PE_PRESENT | if lazy { PE_LAZY } else { 0 };
        self.add_run(vaddr, nr_pages, flags)?;
        let out = self.pages.as_mut().expect("open until finish");
        let err = |source| PagesWriteError::Pages {
            path: self.pages_temp.clone(),
            source,
        };
        // Flush what is buffered, then continue after the reserved range.
        let offset = out.stream_position().map_err(err)?;
        out.seek(SeekFrom::Start(offset + nr_pages * PAGE_SIZE))
            .map_err(err)?;
        Ok(offset)
    }

    /// Where the pages image goes once finished.
    pub fn pages_path(&self) -> &Path {
        &self.pages_path
    }

    /// The pages image being written (for [`Self::reserve_pages`]).
    pub fn pages_file(&self) -> &File {
        self.pages.as_ref().expect("open until finish").get_ref()
    }

    fn check_nothing_owed(&self) -> Result<(), PagesWriteError> {
        match self.owed {
            Some(Owed { vaddr, left }) => Err(PagesWriteError::Owed { vaddr, left }),
            None => Ok(()),
        }
    }

    /// Records a run without data here: `PE_PARENT` (in the parent pre-dump) or `PE_LAZY`
    /// (only on the page server).
    pub fn add_hole(
        &mut self,
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
    ) -> Result<(), PagesWriteError> {
        if flags != PE_PARENT && flags != PE_LAZY {
            return Err(PagesWriteError::BadHoleFlags { vaddr, flags });
        }
        self.check_nothing_owed()?;
        self.add_run(vaddr, nr_pages, flags)
    }

    fn add_run(&mut self, vaddr: u64, nr_pages: u64, flags: u32) -> Result<(), PagesWriteError> {
        if !vaddr.is_multiple_of(PAGE_SIZE) {
            return Err(PagesWriteError::Unaligned { vaddr });
        }
        if vaddr < self.prev_end {
            return Err(PagesWriteError::OutOfOrder {
                vaddr,
                prev_end: self.prev_end,
            });
        }
        let end = nr_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| vaddr.checked_add(len))
            .ok_or(PagesWriteError::Overflow { vaddr, nr_pages })?;
        if nr_pages == 0 {
            return Ok(());
        }
        self.prev_end = end;
        if flags & PE_PRESENT != 0 {
            self.present_pages += nr_pages;
        }

        match &mut self.pending {
            Some(p) if p.flags == flags && p.vaddr + p.nr_pages * PAGE_SIZE == vaddr => {
                p.nr_pages += nr_pages;
            }
            _ => {
                self.flush_pending()?;
                self.pending = Some(PendingRun {
                    vaddr,
                    nr_pages,
                    flags,
                });
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), PagesWriteError> {
        if let Some(p) = self.pending.take() {
            self.scratch.clear();
            let encode = if self.compat_nr_pages {
                pagemap::encode_entry_compat
            } else {
                pagemap::encode_entry
            };
            encode(&mut self.scratch, p.vaddr, p.nr_pages, p.flags);
            let pagemap = self.pagemap.as_mut().expect("open until finish");
            pagemap.write_raw(&self.scratch, &[])?;
            self.entries += 1;
        }
        Ok(())
    }

    fn write_pages(&mut self, data: &[u8]) -> Result<(), PagesWriteError> {
        let out = self.pages.as_mut().expect("open until finish");
        out.write_all(data)
            .map_err(|source| PagesWriteError::Pages {
                path: self.pages_temp.clone(),
                source,
            })
    }

    /// Commits the pages image, then the pagemap.
    pub fn finish(mut self) -> Result<PagesSummary, PagesWriteError> {
        self.check_nothing_owed()?;
        self.flush_pending()?;
        let pages_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PagesWriteError::Pages { path, source }
        };
        let out = self.pages.take().expect("open until finish");
        let file = out
            .into_inner()
            .map_err(|e| pages_err(&self.pages_temp)(e.into_error()))?;
        let len = file.metadata().map_err(pages_err(&self.pages_temp))?.len();
        if len != self.present_pages * PAGE_SIZE {
            return Err(PagesWriteError::Size {
                path: self.pages_temp.clone(),
                len,
                want: self.present_pages * PAGE_SIZE,
            });
        }
        file.sync_all().map_err(pages_err(&self.pages_temp))?;
        drop(file);
        fs::rename(&self.pages_temp, &self.pages_path).map_err(pages_err(&self.pages_path))?;

        let pagemap = self.pagemap.take().expect("open until finish").finish()?;
        Ok(PagesSummary {
            pagemap,
            pages: self.pages_path.clone(),
            entries: self.entries,
            present_pages: self.present_pages,
        })
    }
}

impl Drop for PagesWriter {
    fn drop(&mut self) {
        // The pagemap's own writer removes its temporary file when dropped unfinished.
        if self.pages.take().is_some()
            && let Err(e) = fs::remove_file(&self.pages_temp)
        {
            tracing::warn!(path = %self.pages_temp.display(), error = %e, "cannot remove unfinished pages image");
        }
    }
}
