//! VMAs: `/proc/PID/smaps` parsed and turned into CRIU's `vma_entry` semantics.
//!
//! Each VMA becomes one `vma_entry` with `prot`/`flags` as mmap(2) would take them and
//! the `status` bits CRIU sets (`VMA_AREA_REGULAR` plus the kind: heap, vdso, vvar,
//! anon/file, private/shared). `[vvar]` and a following `[vvar_vclock]` (kernels ≥ 6.13
//! split the vvar area in two) are merged into one VVAR VMA, as CRIU 4.2 writes it.
//! VmFlags give `MAP_GROWSDOWN`, `MAP_NORESERVE`, `MAP_LOCKED` and the madvise bits.

use thiserror::Error;

pub use cryo_format::vma::status;

/// A malformed smaps line.
#[derive(Debug, Error)]
#[error("cannot parse /proc/{pid}/smaps line {line}: {text:?}")]
pub struct SmapsError {
    pub pid: i32,
    pub line: usize,
    pub text: String,
}

/// One mapping as /proc reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rwxs` permissions.
    pub perms: String,
    pub pgoff: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Path or `[heap]`/`[stack]`/`[vdso]`/...; empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags from smaps.
    pub vm_flags: Vec<String>,
}

impl Mapping {
    pub fn is_shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
    /// Backed by a file (not anonymous memory and not a kernel special mapping).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && !self.name.starts_with('[')
    }
    pub fn prot(&self) -> u32 {
        let p = self.perms.as_bytes();
        let mut prot = 0;
        if p.first() == Some(&b'r') {
            prot |= libc::PROT_READ as u32;
        }
        if p.get(1) == Some(&b'w') {
            prot |= libc::PROT_WRITE as u32;
        }
        if p.get(2) == Some(&b'x') {
            prot |= libc::PROT_EXEC as u32;
        }
        prot
    }
}

/// Parses the text of `/proc/PID/smaps` (header lines and `VmFlags:` lines only).
pub fn parse_smaps(pid: i32, text: &str) -> Result<Vec<Mapping>, SmapsError> {
    let mut out: Vec<Mapping> = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let bad = || SmapsError {
            pid,
            line: idx + 1,
            text: line.to_string(),
        };
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out.last_mut().ok_or_else(bad)?;
            last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        let Some((s, e)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let mut parts = line.splitn(6, char::is_whitespace).skip(1);
        let perms = parts.next().ok_or_else(bad)?.to_string();
        let pgoff = u64::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        let (maj, min) = parts
            .next()
            .and_then(|d| d.split_once(':'))
            .ok_or_else(bad)?;
        let dev = (
            u32::from_str_radix(maj, 16).map_err(|_| bad())?,
            u32::from_str_radix(min, 16).map_err(|_| bad())?,
        );
        let inode = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let name = parts.next().unwrap_or("").trim_start().to_string();
        out.push(Mapping {
            start,
            end,
            perms,
            pgoff,
            dev,
            inode,
            name,
            vm_flags: Vec::new(),
        });
    }
    Ok(out)
}

/// What kind of VMA this is, for status bits and for page dumping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    AnonPrivate,
    AnonShared,
    FilePrivate,
    FileShared,
    Heap,
    Stack,
    Vdso,
    Vvar,
    Vsyscall,
}

impl VmaKind {
    pub fn of(m: &Mapping) -> VmaKind {
        match m.name.as_str() {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" | "[vvar_vclock]" => VmaKind::Vvar,
            "[vsyscall]" => VmaKind::Vsyscall,
            "[heap]" => VmaKind::Heap,
            "[stack]" => VmaKind::Stack,
            _ if m.is_file() && m.is_shared() => VmaKind::FileShared,
            _ if m.is_file() => VmaKind::FilePrivate,
            _ if m.is_shared() => VmaKind::AnonShared,
            _ => VmaKind::AnonPrivate,
        }
    }

    /// Whether present private pages of this VMA go into the pages image.
    pub fn dumps_pages(self) -> bool {
        matches!(
            self,
            VmaKind::AnonPrivate
                | VmaKind::FilePrivate
                | VmaKind::Heap
                | VmaKind::Stack
                | VmaKind::Vdso
        )
    }

    /// Whether the pages may be restored lazily (CRIU's PE_LAZY rule).
    pub fn lazy(self) -> bool {
        matches!(self, VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack)
    }
}

/// A VMA ready to be written, with the file it maps (if any) still to be given an id.
#[derive(Debug, Clone)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub prot: u32,
    pub flags: u32,
    pub status: u32,
    pub madv: u64,
    pub kind: VmaKind,
    /// Path of the mapped file for file VMAs (shmid is assigned from files.img).
    pub file: Option<String>,
    /// Open flags of the mapped file (`O_RDONLY` or `O_RDWR`), for file VMAs.
    pub fdflags: Option<u32>,
}

fn madv_bits(m: &Mapping) -> u64 {
    const TABLE: &[(&str, i32)] = &[
        ("sr", libc::MADV_SEQUENTIAL),
        ("rr", libc::MADV_RANDOM),
        ("dc", libc::MADV_DONTFORK),
        ("dd", libc::MADV_DONTDUMP),
        ("mg", libc::MADV_MERGEABLE),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("wf", libc::MADV_WIPEONFORK),
    ];
    TABLE
        .iter()
        .filter(|(f, _)| m.has_flag(f))
        .fold(0, |acc, (_, advice)| acc | (1u64 << advice))
}

/// Converts /proc mappings into image VMAs (CRIU semantics, see the module docs).
pub fn to_vmas(maps: &[Mapping]) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::with_capacity(maps.len());
    for m in maps {
        let kind = VmaKind::of(m);
        if kind == VmaKind::Vvar
            && let Some(prev) = out.last_mut()
            && prev.kind == VmaKind::Vvar
            && prev.end == m.start
        {
            prev.end = m.end;
            continue;
        }

        let mut flags = if m.is_shared() {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u32;
        if !m.is_file() {
            flags |= libc::MAP_ANONYMOUS as u32;
        }
        if m.has_flag("gd") {
            flags |= libc::MAP_GROWSDOWN as u32;
        }
        if m.has_flag("nr") {
            flags |= libc::MAP_NORESERVE as u32;
        }
        if m.has_flag("lo") {
            flags |= libc::MAP_LOCKED as u32;
        }

        let status = match kind {
            VmaKind::Vsyscall => status::VSYSCALL | status::ANON_PRIVATE,
            VmaKind::Vdso => status::REGULAR | status::VDSO | status::ANON_PRIVATE,
            VmaKind::Vvar => status::REGULAR | status::VVAR | status::ANON_PRIVATE,
            VmaKind::Heap => status::REGULAR | status::HEAP | status::ANON_PRIVATE,
            VmaKind::Stack | VmaKind::AnonPrivate => status::REGULAR | status::ANON_PRIVATE,
            VmaKind::AnonShared => status::REGULAR | status::ANON_SHARED,
            VmaKind::FilePrivate => status::REGULAR | status::FILE_PRIVATE,
            VmaKind::FileShared => status::REGULAR | status::FILE_SHARED,
        };
        let file = m.is_file().then(|| m.name.clone());
        let fdflags = file.as_ref().map(|_| {
            if m.is_shared() && m.prot() & libc::PROT_WRITE as u32 != 0 {
                libc::O_RDWR as u32
            } else {
                libc::O_RDONLY as u32
            }
        });
        out.push(Vma {
            start: m.start,
            end: m.end,
            pgoff: if m.is_file() { m.pgoff } else { 0 },
            prot: m.prot(),
            flags,
            status,
            madv: madv_bits(m),
            kind,
            file,
            fdflags,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0001000 r--p 00000000 fe:00 1234                       /usr/bin/x
Size:                  4 kB
VmFlags: rd mr mw me
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac nr
7f18396f0000-7f18396f4000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd
7f18396f4000-7f18396f6000 r--p 00000000 00:00 0                          [vvar_vclock]
VmFlags: rd mr pf io de dd
7f18396f6000-7f18396f8000 r-xp 00000000 00:00 0                          [vdso]
VmFlags: rd ex mr mw me de
7ffd92e3a000-7ffd92e5b000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
VmFlags: ex
";

    #[test]
    fn smaps_becomes_criu_vmas() {
        let maps = parse_smaps(1, SMAPS).unwrap();
        assert_eq!(maps.len(), 7);
        let vmas = to_vmas(&maps);
        assert_eq!(vmas.len(), 6, "vvar and vvar_vclock merge");

        assert_eq!(vmas[0].status, status::REGULAR | status::FILE_PRIVATE);
        assert_eq!(vmas[0].flags, libc::MAP_PRIVATE as u32);
        assert_eq!(vmas[0].file.as_deref(), Some("/usr/bin/x"));

        assert_eq!(
            vmas[1].flags,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u32
        );
        assert_eq!(vmas[1].prot, (libc::PROT_READ | libc::PROT_WRITE) as u32);

        assert_eq!(
            (vmas[2].start, vmas[2].end),
            (0x7f18396f0000, 0x7f18396f6000)
        );
        assert_eq!(
            vmas[2].status,
            status::REGULAR | status::VVAR | status::ANON_PRIVATE
        );
        assert_eq!(vmas[2].madv, 1 << libc::MADV_DONTDUMP);

        assert_eq!(vmas[3].kind, VmaKind::Vdso);
        assert_eq!(
            vmas[4].flags & libc::MAP_GROWSDOWN as u32,
            libc::MAP_GROWSDOWN as u32
        );
        assert_eq!(vmas[5].status, status::VSYSCALL | status::ANON_PRIVATE);
        assert_eq!(vmas[5].prot, libc::PROT_EXEC as u32);
    }

    #[test]
    fn vmflags_before_any_mapping_is_an_error() {
        let err = parse_smaps(7, "VmFlags: rd\n").unwrap_err();
        assert_eq!((err.pid, err.line), (7, 1));
    }
}
