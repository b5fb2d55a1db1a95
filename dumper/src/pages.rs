//! Which pages to dump, and moving them out of the tracee.
//!
//! Selection uses the `PAGEMAP_SCAN` ioctl on `/proc/PID/pagemap`: per dumpable VMA it
//! returns the ranges of pages that are present or swapped, and neither the shared zero
//! page nor page-cache pages (a private file mapping's untouched pages come back from
//! the file on restore; only its copied-on-write pages are dumped, as CRIU does). The
//! vdso is the exception: it is dumped whole, whether its pages are present or not.
//!
//! Transfer: the dumper plants a duplicate of its destination fd in the tracee (the pages
//! image, or the page server's connection) and the tracee writes its own pages there
//! with `pwritev`/`writev`: one copy, made in the tracee's context, and one remote call
//! per batch of runs. Page bytes never go through ptrace. (The first version had the
//! tracee `vmsplice` into a pipe drained by a dumper thread: every page then cost both
//! sides a wake-up, which on this kind of VM made it 1.3-1.5x slower; see
//! benches/README.md.)

use std::os::fd::{AsFd, AsRawFd};

use thiserror::Error;

use crate::parasite::{MAX_IOVS, Parasite, ParasiteError};
use crate::vma::{Vma, VmaKind};

pub const PAGE_SIZE: u64 = 4096;

/// `pagemap_entry.flags` bits.
pub const PE_LAZY: u32 = 1 << 1;
pub const PE_PRESENT: u32 = 1 << 2;

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | (96 << 16) | ((b'f' as libc::c_ulong) << 8) | 16;

/// A failure while selecting or moving pages.
#[derive(Debug, Error)]
pub enum PagesError {
    #[error("cannot open /proc/{pid}/pagemap")]
    OpenPagemap {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("PAGEMAP_SCAN of {pid} over {start:#x}-{end:#x} failed")]
    Scan {
        pid: i32,
        start: u64,
        end: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parasite(#[from] ParasiteError),
    #[error("writing pages of {pid} to {sink} failed")]
    Sink {
        pid: i32,
        sink: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pages of {pid}: stopped by signal {sig}")]
    Interrupted { pid: i32, sig: i32 },
    #[error("pages of {pid}: the tracee moved only {moved} of {want} bytes")]
    Short { pid: i32, moved: u64, want: u64 },
}

/// A run of pages that goes into the pages image as one pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// `PE_PRESENT`, plus `PE_LAZY` for anonymous private memory.
    pub flags: u32,
}

impl PageRun {
    pub fn len(&self) -> u64 {
        self.nr_pages * PAGE_SIZE
    }
    pub fn is_empty(&self) -> bool {
        self.nr_pages == 0
    }
}

/// A range of present (or swapped) pages, none of them the shared zero page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present {
    pub start: u64,
    pub end: u64,
    /// Page-cache (or other non-anonymous) pages: not dumped except in the vdso.
    pub file: bool,
}

/// End of the scanned user address space: x86-64's `TASK_SIZE_MAX` with 4-level
/// page tables (the vsyscall page above it is never dumped).
const USER_END: u64 = (1 << 47) - PAGE_SIZE;

/// Present pages of the whole user address space of `pid`, in one `PAGEMAP_SCAN` walk
/// (it needs no VMA list, so it can run while the VMAs are being read).
pub fn scan_present(pid: i32) -> Result<Vec<Present>, PagesError> {
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))
        .map_err(|source| PagesError::OpenPagemap { pid, source })?;
    let mut out: Vec<Present> = Vec::new();
    let mut regions = vec![PageRegion::default(); 1024];
    let mut start = 0;
    while start < USER_END {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start,
            end: USER_END,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_inverted: PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_PFNZERO,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
            ..PmScanArg::default()
        };
        // SAFETY: arg points at a correctly sized pm_scan_arg whose vec points at
        // `regions` (vec_len entries), both alive for the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            return Err(PagesError::Scan {
                pid,
                start,
                end: USER_END,
                source,
            });
        }
        out.extend(regions[..n as usize].iter().map(|r| Present {
            start: r.start,
            end: r.end,
            file: r.categories & PAGE_IS_FILE != 0,
        }));
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(out)
}

/// The runs to dump: present pages inside VMAs that dump pages, page-cache pages only
/// in the vdso. Both inputs are sorted by address.
pub fn runs_for(vmas: &[Vma], present: &[Present]) -> Vec<PageRun> {
    let mut runs = Vec::new();
    let mut i = 0;
    for vma in vmas.iter().filter(|v| v.kind.dumps_pages()) {
        let flags = if vma.kind.lazy() {
            PE_PRESENT | PE_LAZY
        } else {
            PE_PRESENT
        };
        while i < present.len() && present[i].end <= vma.start {
            i += 1;
        }
        if vma.kind == VmaKind::Vdso {
            // Whole, present or not (a forked child may not have faulted it in yet):
            // CRIU's restorer reads the dumped vdso's ELF header to map it.
            push_run(
                &mut runs,
                vma.start,
                (vma.end - vma.start) / PAGE_SIZE,
                flags,
            );
            continue;
        }
        let mut j = i;
        while j < present.len() && present[j].start < vma.end {
            let p = present[j];
            if !p.file {
                let (s, e) = (p.start.max(vma.start), p.end.min(vma.end));
                push_run(&mut runs, s, (e - s) / PAGE_SIZE, flags);
            }
            j += 1;
        }
    }
    runs
}

/// Selects the pages of `vmas` to dump, in address order.
pub fn select(pid: i32, vmas: &[Vma]) -> Result<Vec<PageRun>, PagesError> {
    Ok(runs_for(vmas, &scan_present(pid)?))
}

fn push_run(runs: &mut Vec<PageRun>, vaddr: u64, nr_pages: u64, flags: u32) {
    if nr_pages == 0 {
        return;
    }
    if let Some(last) = runs.last_mut()
        && last.flags == flags
        && last.vaddr + last.len() == vaddr
    {
        last.nr_pages += nr_pages;
        return;
    }
    runs.push(PageRun {
        vaddr,
        nr_pages,
        flags,
    });
}

/// Most bytes one remote write moves. Bounded so that a stop request is seen between
/// writes and so that a disk-backed pages image is written in pieces the page cache
/// takes well (one 1.5 GiB `pwritev` to ext4 took over ten times longer here than the
/// same bytes in pieces); 32 remote calls per GiB cost a few milliseconds.
const WRITE_CHUNK: u64 = 32 << 20;

/// One remote write: iovecs in the tracee, the file offset of the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    iovs: Vec<(u64, u64)>,
    offset: u64,
}

impl Piece {
    fn len(&self) -> u64 {
        self.iovs.iter().map(|(_, len)| len).sum()
    }
}

/// Cuts `runs`, laid out one after another from file offset `start`, into pieces of at
/// most `chunk` bytes and [`MAX_IOVS`] iovecs.
fn pieces(runs: &[PageRun], start: u64, chunk: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let mut offset = start;
    for run in runs {
        let mut done = 0;
        while done < run.len() {
            let fits = out
                .last()
                .is_some_and(|p| p.len() < chunk && p.iovs.len() < MAX_IOVS);
            if !fits {
                out.push(Piece {
                    iovs: Vec::new(),
                    offset,
                });
            }
            let piece = out.last_mut().expect("pushed above");
            let len = (run.len() - done).min(chunk - piece.len());
            piece.iovs.push((run.vaddr + done, len));
            done += len;
            offset += len;
        }
    }
    out
}

/// Fails if a signal asked the dump to stop.
fn check_interrupt(pid: i32) -> Result<(), PagesError> {
    match crate::interrupt::requested() {
        Some(sig) => Err(PagesError::Interrupted { pid, sig }),
        None => Ok(()),
    }
}

/// Writes the pages of `runs` into `writer`'s pages image with the tracee's own
/// `pwritev` calls on a duplicate of the image's fd planted in it: one copy, from the
/// tracee's memory into the file, in pieces of at most [`WRITE_CHUNK`]. (Through a
/// pipe, every page costs the tracee and the dumper a wake-up each.)
pub fn write_direct(
    parasite: &mut Parasite,
    runs: &[PageRun],
    writer: &mut cryo_format::PagesWriter,
) -> Result<u64, PagesError> {
    let pid = parasite.pid();
    let total: u64 = runs.iter().map(PageRun::len).sum();
    if total == 0 {
        return Ok(0);
    }
    let sink = writer.pages_path().display().to_string();
    let sink_err = |source: std::io::Error| PagesError::Sink {
        pid,
        sink: sink.clone(),
        source,
    };
    // The runs follow each other in the pages image: record them all, then fill them.
    let mut start = None;
    for run in runs {
        let at = writer
            .reserve_pages(run.vaddr, run.nr_pages, run.flags & PE_LAZY != 0)
            .map_err(|e| sink_err(std::io::Error::other(e)))?;
        start.get_or_insert(at);
    }
    let pieces = pieces(runs, start.expect("runs are not empty"), WRITE_CHUNK);

    let old_limit = parasite.allow_file_size(total)?;
    let fd = match parasite.plant_fd(writer.pages_file().as_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            if let Some(limit) = old_limit {
                parasite.set_fsize(limit)?;
            }
            return Err(e.into());
        }
    };
    let mut written = 0;
    let result = (|| -> Result<(), PagesError> {
        for piece in &pieces {
            check_interrupt(pid)?;
            let n = parasite.writev(fd, &piece.iovs, Some(piece.offset));
            check_interrupt(pid)?;
            let n = n.map_err(|e| sink_err(std::io::Error::other(e)))?;
            written += n;
            if n != piece.len() {
                return Err(PagesError::Short {
                    pid,
                    moved: written,
                    want: total,
                });
            }
        }
        Ok(())
    })();
    let closed = parasite.close_planted(fd);
    let limit = old_limit.map_or(Ok(()), |l| parasite.set_fsize(l));
    result?;
    closed?;
    limit?;
    Ok(written)
}

/// Sends the pages of `runs` to a page server: per run, the dumper sends the `ADD_F`
/// header and the tracee writes the run's bytes (`sendmsg`, in pieces of at most
/// [`WRITE_CHUNK`]) into a duplicate of the connection planted in it, so page data goes
/// from the tracee's memory to the socket in one copy. The connection's send timeout
/// holds for the tracee's writes too: a peer that stops reading fails the dump after
/// one timeout.
pub fn send_direct(
    parasite: &mut Parasite,
    runs: &[PageRun],
    client: &mut cryo_pageserver::client::Client,
    dst: cryo_pageserver::protocol::DstId,
) -> Result<u64, PagesError> {
    let pid = parasite.pid();
    let peer = client.peer();
    let sink_err = |source| PagesError::Sink {
        pid,
        sink: format!("page server {peer}"),
        source,
    };
    let fd = parasite.plant_fd(client.stream().as_fd())?;
    let mut sent = 0;
    let result = (|| -> Result<(), PagesError> {
        for run in runs {
            check_interrupt(pid)?;
            let lazy = run.flags & PE_LAZY != 0;
            client
                .start_add(dst, run.vaddr, run.nr_pages, lazy)
                .map_err(|e| sink_err(std::io::Error::other(e)))?;
            for piece in pieces(std::slice::from_ref(run), 0, WRITE_CHUNK) {
                check_interrupt(pid)?;
                let n = parasite.writev(fd, &piece.iovs, None);
                // A stop request cuts the write short (or fails it): say so, not "stalled".
                check_interrupt(pid)?;
                let n = n.map_err(|e| {
                    let stalled = matches!(
                        &e,
                        ParasiteError::Remote(crate::remote::RemoteError::Syscall { source, .. })
                            if source.raw_os_error() == Some(libc::EAGAIN)
                    );
                    sink_err(match stalled {
                        true => std::io::Error::other(format!(
                            "it took no page data within the send timeout ({e})"
                        )),
                        false => std::io::Error::other(e),
                    })
                })?;
                sent += n;
                if n != piece.len() {
                    return Err(sink_err(std::io::Error::other(format!(
                        "it stopped taking page data: {n} of {} bytes at {:#x} within the \
                         send timeout",
                        piece.len(),
                        piece.iovs[0].0
                    ))));
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Part of a run may be on the wire: nothing more may follow on this connection.
        client.mark_broken();
    }
    let closed = parasite.close_planted(fd);
    result?;
    closed?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind) -> Vma {
        Vma {
            start,
            end,
            pgoff: 0,
            prot: 0,
            flags: 0,
            status: 0,
            madv: 0,
            kind,
            file: None,
            fdflags: None,
        }
    }

    #[test]
    fn pieces_follow_the_runs_in_file_order_within_the_chunk() {
        let runs = [
            PageRun {
                vaddr: 0x10000,
                nr_pages: 3,
                flags: PE_PRESENT,
            },
            PageRun {
                vaddr: 0x40000,
                nr_pages: 2,
                flags: PE_PRESENT,
            },
        ];
        let got = pieces(&runs, 0x5000, 2 * PAGE_SIZE);
        assert_eq!(
            got,
            [
                Piece {
                    iovs: vec![(0x10000, 0x2000)],
                    offset: 0x5000
                },
                Piece {
                    iovs: vec![(0x12000, 0x1000), (0x40000, 0x1000)],
                    offset: 0x7000
                },
                Piece {
                    iovs: vec![(0x41000, 0x1000)],
                    offset: 0x9000
                },
            ]
        );
        // Every byte once, at its offset.
        let total: u64 = got.iter().map(Piece::len).sum();
        assert_eq!(total, 5 * PAGE_SIZE);
    }

    #[test]
    fn pieces_never_exceed_the_iovec_limit() {
        let runs: Vec<PageRun> = (0..MAX_IOVS as u64 + 5)
            .map(|i| PageRun {
                vaddr: 0x100000 + i * 2 * PAGE_SIZE,
                nr_pages: 1,
                flags: PE_PRESENT,
            })
            .collect();
        let got = pieces(&runs, 0, 1 << 30);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].iovs.len(), MAX_IOVS);
        assert_eq!(got[1].offset, MAX_IOVS as u64 * PAGE_SIZE);
    }

    #[test]
    fn present_ranges_are_clipped_to_dumpable_vmas() {
        let vmas = [
            vma(0x1000, 0x4000, VmaKind::FilePrivate),
            vma(0x4000, 0x8000, VmaKind::AnonPrivate),
            vma(0x8000, 0x9000, VmaKind::Vvar),
            vma(0x9000, 0xb000, VmaKind::Vdso),
        ];
        let present = [
            Present {
                start: 0x1000,
                end: 0x2000,
                file: true,
            },
            Present {
                start: 0x2000,
                end: 0x6000,
                file: false,
            },
            // Only the vvar page and the vdso's first page are present: the vdso is
            // dumped whole all the same.
            Present {
                start: 0x8000,
                end: 0xa000,
                file: true,
            },
        ];
        assert_eq!(
            runs_for(&vmas, &present),
            vec![
                PageRun {
                    vaddr: 0x2000,
                    nr_pages: 2,
                    flags: PE_PRESENT
                },
                PageRun {
                    vaddr: 0x4000,
                    nr_pages: 2,
                    flags: PE_PRESENT | PE_LAZY
                },
                PageRun {
                    vaddr: 0x9000,
                    nr_pages: 2,
                    flags: PE_PRESENT
                },
            ]
        );
    }

    #[test]
    fn adjacent_runs_with_equal_flags_merge() {
        let mut runs = Vec::new();
        push_run(&mut runs, 0x1000, 2, PE_PRESENT);
        push_run(&mut runs, 0x3000, 1, PE_PRESENT);
        push_run(&mut runs, 0x4000, 1, PE_PRESENT | PE_LAZY);
        push_run(&mut runs, 0x6000, 1, PE_PRESENT | PE_LAZY);
        push_run(&mut runs, 0x7000, 0, PE_PRESENT);
        assert_eq!(
            runs,
            vec![
                PageRun {
                    vaddr: 0x1000,
                    nr_pages: 3,
                    flags: PE_PRESENT
                },
                PageRun {
                    vaddr: 0x4000,
                    nr_pages: 1,
                    flags: PE_PRESENT | PE_LAZY
                },
                PageRun {
                    vaddr: 0x6000,
                    nr_pages: 1,
                    flags: PE_PRESENT | PE_LAZY
                },
            ]
        );
    }
}
