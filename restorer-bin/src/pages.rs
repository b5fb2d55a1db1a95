//! Copying the dumped pages into a rebuilt address space.
//!
//! The bytes come from `cryo_format::MemoryView`, which resolves every run through the
//! `parent` chain to a slice of a mapped pages image, or from runs fetched from a page
//! server (`netpages`). Three ways in, fastest first:
//!
//! - large private anonymous ranges: `UFFDIO_COPY` through a userfaultfd of the child
//!   (see `uffd`): each page is allocated and filled at once, with no zeroing and no
//!   fault per page;
//! - other large ranges from local images (file-backed private, or no userfaultfd):
//!   the pages image is mapped into the child, the range is populated with
//!   `MADV_POPULATE_WRITE`, and the scratch area's `rep movsb` copies inside the child;
//! - small ranges, and fetched ranges that cannot take `UFFDIO_COPY`:
//!   `process_vm_writev` from the restorer's own memory.

use std::collections::HashMap;
use std::path::Path;

use cryo_format::schema::VmaEntry;
use cryo_format::{MemoryView, Source};

use crate::inject::{InjectError, Tracee};
use crate::memory::{MemoryError, PAGE, Scratch, call, open_in_child, remote_err};
use crate::plan::vma_takes_pages;

/// Offset of the copy routine in the scratch area.
pub const COPY_OFF: u64 = 16;
/// `MADV_POPULATE_WRITE` (Linux 5.14).
const MADV_POPULATE_WRITE: u64 = 23;
/// `MADV_POPULATE_READ` (Linux 5.14).
const MADV_POPULATE_READ: i32 = 22;
/// Ranges at least this long are populated before they are written.
const POPULATE_MIN: u64 = 64 * PAGE;

/// Where the dumped pages come from.
#[derive(Debug, Clone, Copy)]
pub enum PageSource<'a> {
    /// `pagemap-PID.img` + `pages-N.img` in the image directory (and its parents).
    Images(&'a MemoryView),
    /// Runs fetched from a page server.
    Fetched(&'a crate::netpages::FetchedPages),
}

/// Where the bytes of a present page are: pages image and offset in it.
fn pages_location(
    view: &MemoryView,
    depth: usize,
    vaddr: u64,
) -> Option<(std::path::PathBuf, u64)> {
    let (dir, pagemap) = view.chain().nth(depth)?;
    let run = pagemap.find(vaddr)?;
    let offset = run.pages_offset? + (vaddr - run.vaddr);
    Some((dir.join(pagemap.pages_file_name()), offset))
}

/// Pages images mapped read-only inside the child, for the in-child copy.
struct ChildImages {
    by_path: HashMap<std::path::PathBuf, (u64, u64)>,
}

impl ChildImages {
    fn base(
        &mut self,
        t: &Tracee,
        pid: i32,
        scratch: Scratch,
        path: &Path,
    ) -> Result<u64, MemoryError> {
        if let Some(&(base, _)) = self.by_path.get(path) {
            return Ok(base);
        }
        let len = std::fs::metadata(path)
            .map_err(|e| {
                remote_err(
                    pid,
                    format!("sizing {}", path.display()),
                    InjectError::Write {
                        pid,
                        addr: 0,
                        len: 0,
                        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    },
                )
            })?
            .len();
        let fd = open_in_child(t, pid, scratch, path, libc::O_RDONLY)?;
        let flags = (libc::MAP_PRIVATE | libc::MAP_POPULATE) as u64;
        let base = call(
            t,
            pid,
            format!("mapping {}", path.display()),
            "mmap",
            libc::SYS_mmap,
            &[0, len, libc::PROT_READ as u64, flags, fd, 0],
        )?;
        call(
            t,
            pid,
            "closing a pages image",
            "close",
            libc::SYS_close,
            &[fd],
        )?;
        self.by_path.insert(path.to_path_buf(), (base, len));
        Ok(base)
    }

    fn unmap(self, t: &Tracee, pid: i32) -> Result<(), MemoryError> {
        for (_, (base, len)) in self.by_path {
            call(
                t,
                pid,
                "unmapping a pages image",
                "munmap",
                libc::SYS_munmap,
                &[base, len],
            )?;
        }
        Ok(())
    }
}

/// Copies every dumped page into the child; returns the number of pages written.
///
/// Large ranges are copied by the child itself: the pages image is mapped into it,
/// the target range is populated in one `MADV_POPULATE_WRITE` (allocation without a
/// fault per page), and the scratch area's `rep movsb` moves the bytes. Small ranges
/// go through `process_vm_writev` from the restorer's own mapping of the image.
pub fn fill_pages(
    t: &Tracee,
    pid: i32,
    vmas: &[VmaEntry],
    source: PageSource<'_>,
    scratch: Scratch,
) -> Result<u64, MemoryError> {
    // (vaddr, bytes, parent depth of the local pages image holding them)
    let mut segments: Vec<(u64, &[u8], Option<usize>)> = Vec::new();
    match source {
        PageSource::Images(view) => {
            let runs = view
                .resolved_runs()
                .map_err(|source| MemoryError::Pages { pid, source })?;
            for seg in runs {
                match seg.source {
                    Source::Data { bytes, depth } => segments.push((seg.vaddr, bytes, Some(depth))),
                    Source::Lazy => {
                        return Err(MemoryError::Lazy {
                            pid,
                            vaddr: seg.vaddr,
                            len: seg.len,
                        });
                    }
                    Source::Absent => {}
                }
            }
        }
        PageSource::Fetched(fetched) => {
            segments.extend(fetched.runs.iter().map(|(v, b)| (*v, b.as_slice(), None)));
        }
    }
    let view = match source {
        PageSource::Images(view) => Some(view),
        PageSource::Fetched(_) => None,
    };
    let mut images = ChildImages {
        by_path: HashMap::new(),
    };
    let mut uffd = match crate::uffd::ChildUffd::open(t, pid) {
        Ok(u) => Some(u),
        Err(error) => {
            tracing::debug!(pid, %error, "no userfaultfd; copying in the child");
            None
        }
    };
    let mut written = 0;
    for (seg_vaddr, bytes, depth) in segments {
        let seg_end = seg_vaddr + bytes.len() as u64;
        let first = vmas.partition_point(|v| v.end <= seg_vaddr);
        for vma in vmas[first..].iter().take_while(|v| v.start < seg_end) {
            if !vma_takes_pages(vma) {
                continue;
            }
            let from = vma.start.max(seg_vaddr);
            let to = vma.end.min(seg_end);
            written += (to - from) / PAGE;
            let local = &bytes[(from - seg_vaddr) as usize..(to - seg_vaddr) as usize];
            if to - from >= POPULATE_MIN
                && vma.flags & libc::MAP_ANONYMOUS as u32 != 0
                && let Some(u) = &uffd
            {
                // SAFETY: madvise on our own read-only mapping of the pages image;
                // populating it only saves faults during the copy.
                unsafe {
                    libc::madvise(
                        local.as_ptr() as *mut libc::c_void,
                        local.len(),
                        MADV_POPULATE_READ,
                    )
                };
                match u.fill(from, local) {
                    Ok(()) => continue,
                    Err(error) => {
                        tracing::debug!(pid, %error, "UFFDIO_COPY failed; copying in the child");
                        uffd = None;
                    }
                }
            }
            if to - from >= POPULATE_MIN
                && let (Some(view), Some(depth)) = (view, depth)
                && let Some((path, offset)) = pages_location(view, depth, from)
            {
                let t0 = std::time::Instant::now();
                let base = images.base(t, pid, scratch, &path)?;
                let t1 = std::time::Instant::now();
                // A kernel without MADV_POPULATE_WRITE just faults under the copy.
                let _ = t.syscall(
                    "madvise",
                    libc::SYS_madvise,
                    &[from, to - from, MADV_POPULATE_WRITE],
                );
                let t2 = std::time::Instant::now();
                t.copy_in_child(scratch.addr + COPY_OFF, from, base + offset, to - from)
                    .map_err(|source| remote_err(pid, "copying dumped pages", source))?;
                tracing::trace!(
                    pid,
                    from,
                    pages = (to - from) / PAGE,
                    map_ms = (t1 - t0).as_secs_f64() * 1e3,
                    populate_ms = (t2 - t1).as_secs_f64() * 1e3,
                    copy_ms = t2.elapsed().as_secs_f64() * 1e3,
                    "range copied in the child"
                );
                continue;
            }
            t.write(from, local)
                .map_err(|source| remote_err(pid, "writing dumped pages", source))?;
        }
    }
    images.unmap(t, pid)?;
    if let Some(u) = uffd {
        u.close(t)
            .map_err(|source| remote_err(pid, "closing the userfaultfd", source))?;
    }
    Ok(written)
}
