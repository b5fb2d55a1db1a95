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

use crate::inject::{COPY_CODE, GADGET_CODE, InjectError, Tracee};
use crate::maps::{self, Mapping};
use crate::pages::{COPY_OFF, PageSource, fill_pages};
use crate::plan::{FileSpec, ProcessPlan, vma_status};
use crate::vdso::move_vdso;

pub const PAGE: u64 = 4096;
/// Size of the scratch area: code and small structs, then a page for paths, auxv...
pub const SCRATCH_LEN: u64 = 4 * PAGE;
/// Offset of the argument area inside the scratch area.
pub const ARGS_OFF: u64 = 256;
/// Offset of the string area.
pub const STR_OFF: u64 = 2 * PAGE;
/// Lowest address searched for free room.
const SEARCH_FROM: u64 = 0x1000_0000;
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
    pages: PageSource<'_>,
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
    let pages = fill_pages(t, pid, vmas, pages, scratch)?;
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
    apply_madvise(t, pid, vmas)?;
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

pub(crate) fn remote_err(pid: i32, step: impl Into<String>, source: InjectError) -> MemoryError {
    MemoryError::Remote {
        pid,
        step: step.into(),
        source,
    }
}

pub(crate) fn call(
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

/// Advice values that stick to a VMA as flags, the only ones the image records.
const STICKY_ADVICE: [u32; 8] = [
    libc::MADV_RANDOM as u32,
    libc::MADV_SEQUENTIAL as u32,
    libc::MADV_DONTFORK as u32,
    libc::MADV_MERGEABLE as u32,
    libc::MADV_HUGEPAGE as u32,
    libc::MADV_NOHUGEPAGE as u32,
    libc::MADV_DONTDUMP as u32,
    libc::MADV_WIPEONFORK as u32,
];

/// Gives every VMA its dumped sticky advice (bit n of `madv` = advice n).
fn apply_madvise(t: &Tracee, pid: i32, vmas: &[VmaEntry]) -> Result<(), MemoryError> {
    let special = vma_status::VDSO | vma_status::VVAR | vma_status::VSYSCALL;
    for vma in vmas.iter().filter(|v| v.status & special == 0) {
        let madv = vma.madv.unwrap_or(0);
        for advice in STICKY_ADVICE.iter().filter(|&&a| madv & (1 << a) != 0) {
            let step = format!("madvise({advice}) of VMA {:#x}-{:#x}", vma.start, vma.end);
            call(
                t,
                pid,
                step,
                "madvise",
                libc::SYS_madvise,
                &[vma.start, vma.end - vma.start, *advice as u64],
            )?;
        }
    }
    Ok(())
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
