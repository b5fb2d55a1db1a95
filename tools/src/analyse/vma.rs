//! VMAs as the analyser sees them: address range, protection, kind and backing file.
//!
//! The kind comes from the VMA's `status` bits (CRIU's `VMA_AREA_*` image ABI) and its mmap
//! flags; the file name from the `files.img` entry that `shmid` names for file mappings.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use cryo_format::vma::status;

/// `PROT_*` bits.
pub mod prot {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const EXEC: u32 = 4;
}

/// `MAP_GROWSDOWN`: a stack-like mapping that CRIU does not flag as the stack.
const MAP_GROWSDOWN: u32 = 0x100;

/// What a VMA is, from its status bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmaKind {
    Stack,
    Heap,
    Vdso,
    Vvar,
    Vsyscall,
    Anon,
    AnonShared,
    File,
    FileShared,
    Sysvipc,
    Socket,
    Aio,
    Memfd,
    Other,
}

impl VmaKind {
    /// Every kind, for help texts and parsing.
    pub const ALL: [VmaKind; 14] = [
        VmaKind::Stack,
        VmaKind::Heap,
        VmaKind::Vdso,
        VmaKind::Vvar,
        VmaKind::Vsyscall,
        VmaKind::Anon,
        VmaKind::AnonShared,
        VmaKind::File,
        VmaKind::FileShared,
        VmaKind::Sysvipc,
        VmaKind::Socket,
        VmaKind::Aio,
        VmaKind::Memfd,
        VmaKind::Other,
    ];

    /// Classifies a VMA by its `status` and mmap `flags`.
    pub fn classify(status_bits: u32, flags: u32) -> VmaKind {
        use status::*;
        // Special mappings first: they also carry the generic anon/file bits.
        if status_bits & VSYSCALL != 0 {
            VmaKind::Vsyscall
        } else if status_bits & VVAR != 0 {
            VmaKind::Vvar
        } else if status_bits & VDSO != 0 {
            VmaKind::Vdso
        } else if status_bits & STACK != 0 || flags & MAP_GROWSDOWN != 0 {
            VmaKind::Stack
        } else if status_bits & HEAP != 0 {
            VmaKind::Heap
        } else if status_bits & AIORING != 0 {
            VmaKind::Aio
        } else if status_bits & SOCKET != 0 {
            VmaKind::Socket
        } else if status_bits & SYSVIPC != 0 {
            VmaKind::Sysvipc
        } else if status_bits & MEMFD != 0 {
            VmaKind::Memfd
        } else if status_bits & FILE_SHARED != 0 {
            VmaKind::FileShared
        } else if status_bits & FILE_PRIVATE != 0 {
            VmaKind::File
        } else if status_bits & ANON_SHARED != 0 {
            VmaKind::AnonShared
        } else if status_bits & ANON_PRIVATE != 0 {
            VmaKind::Anon
        } else {
            VmaKind::Other
        }
    }

    /// The kind's name as used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            VmaKind::Stack => "stack",
            VmaKind::Heap => "heap",
            VmaKind::Vdso => "vdso",
            VmaKind::Vvar => "vvar",
            VmaKind::Vsyscall => "vsyscall",
            VmaKind::Anon => "anon",
            VmaKind::AnonShared => "anon_shared",
            VmaKind::File => "file",
            VmaKind::FileShared => "file_shared",
            VmaKind::Sysvipc => "sysvipc",
            VmaKind::Socket => "socket",
            VmaKind::Aio => "aio",
            VmaKind::Memfd => "memfd",
            VmaKind::Other => "other",
        }
    }

    /// Whether pages of this kind that were not dumped read as zeroes (else: from a file).
    pub fn is_anonymous(self) -> bool {
        !matches!(
            self,
            VmaKind::File | VmaKind::FileShared | VmaKind::Memfd | VmaKind::Sysvipc
        )
    }
}

impl fmt::Display for VmaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VmaKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        VmaKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = VmaKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown VMA kind {text:?} (one of: {})", names.join(", "))
            })
    }
}

/// One VMA of a dumped process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub flags: u32,
    pub status: u32,
    pub kind: VmaKind,
    /// Path of the mapped file, when `files.img` names one.
    pub path: Option<String>,
}

impl Vma {
    /// Size in bytes (zero for an inverted, malformed VMA).
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Protection as `rwx` letters.
    pub fn prot_string(&self) -> String {
        prot_string(self.prot)
    }

    /// The kind and the file, as one label (`file /usr/lib/libc.so.6`).
    pub fn label(&self) -> String {
        match &self.path {
            Some(path) => format!("{} {path}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

/// Protection bits as `rwx` letters (`r-x`, `---`).
pub fn prot_string(bits: u32) -> String {
    let flag = |bit: u32, letter: char| if bits & bit != 0 { letter } else { '-' };
    [
        flag(prot::READ, 'r'),
        flag(prot::WRITE, 'w'),
        flag(prot::EXEC, 'x'),
    ]
    .into_iter()
    .collect()
}

/// Parses a protection filter such as `rw`, `r-x` or `x`: the letters that must be present.
pub fn parse_prot_filter(text: &str) -> Result<u32, String> {
    text.chars().try_fold(0, |bits, letter| match letter {
        'r' => Ok(bits | prot::READ),
        'w' => Ok(bits | prot::WRITE),
        'x' => Ok(bits | prot::EXEC),
        '-' => Ok(bits),
        other => Err(format!(
            "unknown protection letter {other:?} in {text:?} (use r, w, x)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_special_mappings_before_generic_bits() {
        let vdso = 1 | status::VDSO | status::ANON_PRIVATE;
        assert_eq!(VmaKind::classify(vdso, 0x2), VmaKind::Vdso);
        let stack = 1 | status::STACK | status::ANON_PRIVATE;
        assert_eq!(VmaKind::classify(stack, 0x122), VmaKind::Stack);
        let lib = 1 | status::FILE_PRIVATE;
        assert_eq!(VmaKind::classify(lib, 0x2), VmaKind::File);
        assert_eq!(
            VmaKind::classify(1 | status::ANON_PRIVATE, 0x22),
            VmaKind::Anon
        );
    }

    #[test]
    fn prot_letters_round_trip_through_filter() {
        assert_eq!(prot_string(prot::READ | prot::EXEC), "r-x");
        assert_eq!(parse_prot_filter("r-x"), Ok(prot::READ | prot::EXEC));
        assert!(parse_prot_filter("rq").is_err());
        assert_eq!("file_shared".parse::<VmaKind>(), Ok(VmaKind::FileShared));
        assert!("heapish".parse::<VmaKind>().is_err());
    }
}
