//! Rebuilding a process's address space from outside, with remote system calls.
//!
//! The freshly created child is a copy of the restorer. In order:
//!
//! 1. A scratch area (`syscall; int3` plus room for arguments) is mapped at an address
//!    that neither the child's current mappings nor any dumped VMA uses.
//! 2. The rseq area the child inherited from the restorer is unregistered (the kernel
//!    would fault on it once it is unmapped), then everything the child inherited is
//!    unmapped except the scratch area and the vdso family.
//! 3. `[vvar]`, `[vvar_vclock]` and `[vdso]` move together (through a free temporary
//!    spot, so no move lands on another) to where the dump had them: the restored
//!    code has pointers into the vdso.
//! 4. Every other VMA is mapped at its dumped address — private ones writable for now,
//!    file-backed ones from the file opened in the child — and the dumped pages are
//!    copied in with `process_vm_writev` straight from the mmapped pages images
//!    (following `parent` links through `cryo_format::MemoryView`).
//! 5. Protections are set to the dumped ones, and `PR_SET_MM_MAP` sets code, data,
//!    brk, stack, arguments, environment, auxv and the exe link in one call.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cryo_format::schema::VmaEntry;
use cryo_format::{MemoryView, Source};

use crate::inject::{COPY_CODE, GADGET_CODE, InjectError, Tracee};
use crate::maps::{self, Mapping};
use crate::plan::{FileSpec, ProcessPlan, vma_status, vma_takes_pages};

const PAGE: u64 = 4096;
/// Size of the scratch area: code and small structs, then a page for paths, auxv...
pub const SCRATCH_LEN: u64 = 4 * PAGE;
/// Offset of the argument area inside the scratch area.
pub const ARGS_OFF: u64 = 256;
/// Offset of the string area.
pub const STR_OFF: u64 = 2 * PAGE;
/// Lowest address searched for free room.
const SEARCH_FROM: u64 = 0x1000_0000;
/// Offset of the copy routine in the scratch area.
const COPY_OFF: u64 = 16;
/// `MADV_POPULATE_WRITE` (Linux 5.14).
const MADV_POPULATE_WRITE: u64 = 23;
/// `MADV_POPULATE_READ` (Linux 5.14).
const MADV_POPULATE_READ: i32 = 22;
/// Ranges at least this long are populated before they are written.
const POPULATE_MIN: u64 = 64 * PAGE;
/// End of the 47-bit user address space.
const USER_END: u64 = 0x7fff_ffff_f000;

/// Errors rebuilding memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("process {pid}: {step}")]
    Remote {
        pid: i32,
        step: String,
        #[source]
        source: InjectError,
    },
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    #[error("process {pid}: no free room of {len:#x} bytes for the {what}")]
    NoRoom {
        pid: i32,
        len: u64,
        what: &'static str,
    },
    #[error("process {pid}: mmap of VMA [{start:#x}, {end:#x}) landed at {got:#x}")]
    Misplaced {
        pid: i32,
        start: u64,
        end: u64,
        got: u64,
    },
    #[error(
        "process {pid}: the dumped vdso/vvar layout ({dumped}) does not match this kernel's \
         ({current})"
    )]
    VdsoLayout {
        pid: i32,
        dumped: String,
        current: String,
    },
    #[error("process {pid}: pages at {vaddr:#x} (+{len:#x}) are lazy: restore needs a page server")]
    Lazy { pid: i32, vaddr: u64, len: u64 },
    #[error("process {pid}: reading dumped memory")]
    Pages {
        pid: i32,
        #[source]
        source: cryo_format::MemoryError,
    },
    #[error("process {pid}: path {path} contains a NUL byte")]
    BadPath { pid: i32, path: String },
}

/// The scratch area of a child.
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    pub addr: u64,
}

impl Scratch {
    pub fn args(&self) -> u64 {
        self.addr + ARGS_OFF
    }

    pub fn strings(&self) -> u64 {
        self.addr + STR_OFF
    }
}

/// Rebuilds the memory of `proc` in the seized leader `t`; returns the scratch area,
/// still mapped, for the thread and switch steps.
pub fn restore(
    t: &mut Tracee,
    proc: &ProcessPlan,
    files: &BTreeMap<u32, FileSpec>,
    view: &MemoryView,
) -> Result<Scratch, MemoryError> {
    let pid = proc.pid;
    let vmas = &proc.mm.vmas;
    let current = maps::read(pid)?;

    let mut busy: Vec<(u64, u64)> = current.iter().map(|m| (m.start, m.end)).collect();
    busy.extend(vmas.iter().map(|v| (v.start, v.end)));
    let addr = find_gap(&busy, SCRATCH_LEN).ok_or(MemoryError::NoRoom {
        pid,
        len: SCRATCH_LEN,
        what: "scratch area",
    })?;
    let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    call(
        t,
        pid,
        "mapping the scratch area",
        "mmap",
        libc::SYS_mmap,
        &[addr, SCRATCH_LEN, prot as u64, flags as u64, u64::MAX, 0],
    )?;
    t.write(addr, &GADGET_CODE)
        .and_then(|()| t.write(addr + COPY_OFF, &COPY_CODE))
        .map_err(|source| remote_err(pid, "writing the scratch code", source))?;
    t.gadget = addr;
    let scratch = Scratch { addr };

    if let Some(rseq) = t
        .rseq_config()
        .map_err(|source| remote_err(pid, "reading the inherited rseq", source))?
    {
        call(
            t,
            pid,
            "unregistering the inherited rseq",
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1,
                rseq.signature as u64,
            ],
        )?;
    }

    for m in &current {
        if m.is_vdso_family() || m.start >= USER_END {
            continue;
        }
        call(
            t,
            pid,
            format!("unmapping inherited {:#x}-{:#x}", m.start, m.end),
            "munmap",
            libc::SYS_munmap,
            &[m.start, m.end - m.start],
        )?;
    }

    let specials: Vec<&Mapping> = current.iter().filter(|m| m.is_vdso_family()).collect();
    move_vdso(t, pid, vmas, &specials, scratch)?;

    let mut file_fds: HashMap<u64, u64> = HashMap::new();
    let mut reprotect = Vec::new();
    for vma in vmas {
        if vma.status & (vma_status::VDSO | vma_status::VVAR | vma_status::VSYSCALL) != 0 {
            continue;
        }
        let shared = vma.flags & libc::MAP_SHARED as u32 != 0;
        let mut map_prot = vma.prot;
        if !shared {
            map_prot |= (libc::PROT_READ | libc::PROT_WRITE) as u32;
        }
        if map_prot != vma.prot {
            reprotect.push(vma);
        }
        let is_file = vma.status & (vma_status::FILE_PRIVATE | vma_status::FILE_SHARED) != 0;
        let (fd, flags) = if is_file {
            let fd = match file_fds.get(&vma.shmid) {
                Some(&fd) => fd,
                None => {
                    let Some(FileSpec::Regular { path, .. }) = files.get(&(vma.shmid as u32))
                    else {
                        unreachable!("plan checks mapped files");
                    };
                    let oflag = if shared && vma.prot & libc::PROT_WRITE as u32 != 0 {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    };
                    let fd = open_in_child(t, pid, scratch, path, oflag)?;
                    file_fds.insert(vma.shmid, fd);
                    fd
                }
            };
            (fd, vma.flags & !(libc::MAP_ANONYMOUS as u32))
        } else {
            (u64::MAX, vma.flags | libc::MAP_ANONYMOUS as u32)
        };
        if vma.status & vma_status::ANON_SHARED != 0 {
            // TODO: shared anonymous memory needs pagemap-shmem and one mapping shared by
            // every process that had it; it is mapped empty for now.
            tracing::warn!(
                pid,
                start = vma.start,
                "shared anonymous VMA restored empty"
            );
        }
        let got = call(
            t,
            pid,
            format!("mapping VMA {:#x}-{:#x}", vma.start, vma.end),
            "mmap",
            libc::SYS_mmap,
            &[
                vma.start,
                vma.end - vma.start,
                map_prot as u64,
                (flags | libc::MAP_FIXED as u32) as u64,
                fd,
                if is_file { vma.pgoff } else { 0 },
            ],
        )?;
        if got != vma.start {
            return Err(MemoryError::Misplaced {
                pid,
                start: vma.start,
                end: vma.end,
                got,
            });
        }
    }

    let mapped = std::time::Instant::now();
    let pages = fill_pages(t, pid, vmas, view, scratch)?;
    tracing::debug!(
        pid,
        pages,
        ms = mapped.elapsed().as_secs_f64() * 1e3,
        "pages written"
    );

    for vma in reprotect {
        call(
            t,
            pid,
            format!("protecting VMA {:#x}-{:#x}", vma.start, vma.end),
            "mprotect",
            libc::SYS_mprotect,
            &[vma.start, vma.end - vma.start, vma.prot as u64],
        )?;
    }
    for (_, fd) in file_fds {
        call(
            t,
            pid,
            "closing a mapped file",
            "close",
            libc::SYS_close,
            &[fd],
        )?;
    }

    set_mm_map(t, proc, scratch)?;
    Ok(scratch)
}

fn remote_err(pid: i32, step: impl Into<String>, source: InjectError) -> MemoryError {
    MemoryError::Remote {
        pid,
        step: step.into(),
        source,
    }
}

fn call(
    t: &Tracee,
    pid: i32,
    step: impl Into<String>,
    name: &'static str,
    nr: libc::c_long,
    args: &[u64],
) -> Result<u64, MemoryError> {
    t.syscall(name, nr, args)
        .map_err(|source| remote_err(pid, step, source))
}

/// Writes `path` into the scratch string area and opens it in the child.
pub fn open_in_child(
    t: &Tracee,
    pid: i32,
    scratch: Scratch,
    path: &Path,
    oflag: i32,
) -> Result<u64, MemoryError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| MemoryError::BadPath {
        pid,
        path: path.display().to_string(),
    })?;
    t.write(scratch.strings(), c.as_bytes_with_nul())
        .map_err(|source| remote_err(pid, "writing a path", source))?;
    call(
        t,
        pid,
        format!("opening {}", path.display()),
        "openat",
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            scratch.strings(),
            (oflag | libc::O_CLOEXEC) as u64,
            0,
        ],
    )
}

/// Lowest page-aligned address from `SEARCH_FROM` where `len` bytes touch no busy range.
pub fn find_gap(busy: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut ranges = busy.to_vec();
    ranges.sort_unstable();
    let mut at = SEARCH_FROM;
    for (start, end) in ranges {
        if end <= at {
            continue;
        }
        if start >= at + len {
            break;
        }
        at = end.div_ceil(PAGE) * PAGE;
    }
    (at + len <= USER_END).then_some(at)
}

fn describe(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(s, e)| format!("{:#x}+{:#x}", s, e - s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Moves the current vdso family so that `[vdso]` lands on the dumped vdso VMA.
fn move_vdso(
    t: &Tracee,
    pid: i32,
    vmas: &[VmaEntry],
    specials: &[&Mapping],
    scratch: Scratch,
) -> Result<(), MemoryError> {
    let dumped: Vec<(u64, u64)> = vmas
        .iter()
        .filter(|v| v.status & (vma_status::VDSO | vma_status::VVAR) != 0)
        .map(|v| (v.start, v.end))
        .collect();
    let Some(dumped_vdso) = vmas.iter().find(|v| v.status & vma_status::VDSO != 0) else {
        return Ok(());
    };
    let current: Vec<(u64, u64)> = specials.iter().map(|m| (m.start, m.end)).collect();
    let layout_error = || MemoryError::VdsoLayout {
        pid,
        dumped: describe(&dumped),
        current: describe(&current),
    };
    let Some(cur_vdso) = specials.iter().find(|m| m.name == "[vdso]") else {
        return Err(layout_error());
    };
    if cur_vdso.end - cur_vdso.start != dumped_vdso.end - dumped_vdso.start {
        return Err(layout_error());
    }
    let delta = dumped_vdso.start.wrapping_sub(cur_vdso.start);
    // The family must occupy the same span, shifted, as the dumped VMAs (CRIU may
    // record [vvar] and [vvar_vclock] as one VMA).
    let span = |r: &[(u64, u64)]| {
        (
            r.iter().map(|x| x.0).min().unwrap_or(0),
            r.iter().map(|x| x.1).max().unwrap_or(0),
        )
    };
    let (cs, ce) = span(&current);
    let (ds, de) = span(&dumped);
    if cs.wrapping_add(delta) != ds || ce.wrapping_add(delta) != de {
        return Err(layout_error());
    }
    if delta == 0 {
        return Ok(());
    }

    let mut busy: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.extend(&current);
    busy.push((scratch.addr, scratch.addr + SCRATCH_LEN));
    let tmp = find_gap(&busy, ce - cs).ok_or(MemoryError::NoRoom {
        pid,
        len: ce - cs,
        what: "moving the vdso",
    })?;
    let mremap = |from: u64, len: u64, to: u64| {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        call(
            t,
            pid,
            format!("moving the vdso family {from:#x} -> {to:#x}"),
            "mremap",
            libc::SYS_mremap,
            &[from, len, len, flags, to],
        )
    };
    for &(s, e) in &current {
        mremap(s, e - s, tmp + (s - cs))?;
    }
    for &(s, e) in &current {
        mremap(tmp + (s - cs), e - s, s.wrapping_add(delta))?;
    }
    Ok(())
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
fn fill_pages(
    t: &Tracee,
    pid: i32,
    vmas: &[VmaEntry],
    view: &MemoryView,
    scratch: Scratch,
) -> Result<u64, MemoryError> {
    let segments = view
        .resolved_runs()
        .map_err(|source| MemoryError::Pages { pid, source })?;
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
    for seg in segments {
        let (bytes, depth) = match seg.source {
            Source::Data { bytes, depth } => (bytes, depth),
            Source::Lazy => {
                return Err(MemoryError::Lazy {
                    pid,
                    vaddr: seg.vaddr,
                    len: seg.len,
                });
            }
            Source::Absent => continue,
        };
        let seg_end = seg.vaddr + seg.len;
        let first = vmas.partition_point(|v| v.end <= seg.vaddr);
        for vma in vmas[first..].iter().take_while(|v| v.start < seg_end) {
            if !vma_takes_pages(vma) {
                continue;
            }
            let from = vma.start.max(seg.vaddr);
            let to = vma.end.min(seg_end);
            written += (to - from) / PAGE;
            let local = &bytes[(from - seg.vaddr) as usize..(to - seg.vaddr) as usize];
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

/// `struct prctl_mm_map` of prctl(2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

const _: () = assert!(std::mem::size_of::<PrctlMmMap>() == 104);
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

fn set_mm_map(t: &Tracee, proc: &ProcessPlan, scratch: Scratch) -> Result<(), MemoryError> {
    let pid = proc.pid;
    let mm = &proc.mm;
    let exe_fd = open_in_child(t, pid, scratch, &proc.exe, libc::O_RDONLY)?;

    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let auxv_addr = scratch.strings() + PAGE;
    t.write(auxv_addr, &auxv)
        .map_err(|source| remote_err(pid, "writing auxv", source))?;
    let map = PrctlMmMap {
        start_code: mm.mm_start_code,
        end_code: mm.mm_end_code,
        start_data: mm.mm_start_data,
        end_data: mm.mm_end_data,
        start_brk: mm.mm_start_brk,
        brk: mm.mm_brk,
        start_stack: mm.mm_start_stack,
        arg_start: mm.mm_arg_start,
        arg_end: mm.mm_arg_end,
        env_start: mm.mm_env_start,
        env_end: mm.mm_env_end,
        auxv: auxv_addr,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    // SAFETY: PrctlMmMap is repr(C) plain integers without padding (size asserted).
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&map as *const PrctlMmMap).cast::<u8>(),
            std::mem::size_of::<PrctlMmMap>(),
        )
    };
    t.write(scratch.args(), raw)
        .map_err(|source| remote_err(pid, "writing prctl_mm_map", source))?;
    call(
        t,
        pid,
        "setting the mm fields (PR_SET_MM_MAP)",
        "prctl",
        libc::SYS_prctl,
        &[
            PR_SET_MM,
            PR_SET_MM_MAP,
            scratch.args(),
            std::mem::size_of::<PrctlMmMap>() as u64,
            0,
        ],
    )?;
    call(
        t,
        pid,
        "closing the exe fd",
        "close",
        libc::SYS_close,
        &[exe_fd],
    )?;

    if let Some(d) = mm.dumpable
        && (0..=1).contains(&d)
    {
        call(
            t,
            pid,
            "PR_SET_DUMPABLE",
            "prctl",
            libc::SYS_prctl,
            &[libc::PR_SET_DUMPABLE as u64, d as u64],
        )?;
    }
    if mm.thp_disabled == Some(true) {
        call(
            t,
            pid,
            "PR_SET_THP_DISABLE",
            "prctl",
            libc::SYS_prctl,
            &[libc::PR_SET_THP_DISABLE as u64, 1],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_skips_busy_ranges() {
        let busy = [
            (SEARCH_FROM, SEARCH_FROM + 0x3000),
            (SEARCH_FROM + 0x4000, SEARCH_FROM + 0x5000),
        ];
        assert_eq!(find_gap(&busy, 0x1000), Some(SEARCH_FROM + 0x3000));
        assert_eq!(find_gap(&busy, 0x2000), Some(SEARCH_FROM + 0x5000));
        assert_eq!(find_gap(&[], 0x1000), Some(SEARCH_FROM));
    }

    #[test]
    fn gap_is_none_when_space_is_full() {
        assert_eq!(find_gap(&[(0, USER_END)], PAGE), None);
    }
}
