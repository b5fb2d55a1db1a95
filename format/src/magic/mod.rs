//! The table of image magics.
//!
//! Every CRIU image type is named by a 32-bit magic. A v1.1 image file starts with a *first
//! magic* that says which family it belongs to (common images, service images such as
//! `stats-dump`), followed by the *type magic*. `inventory.img` carries only its own type magic,
//! and raw images (`pages-N.img`, tarballs, `ip` dumps) have no header at all.
//!
//! The table also records, for each type, the protobuf message of its entries and what raw
//! bytes (if any) follow each entry, so the reader can frame every image without knowing the
//! message types at compile time. Several names share one value (`SHMEM_PAGEMAP` is `PAGEMAP`);
//! lookup by value returns the first, canonical name, lookup by name also accepts the aliases.

mod table;

use std::fmt;

pub use table::MAGICS;

/// First magic of a common (v1.1) image.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First magic of a service image (`stats-dump`, `stats-restore`, `irmap-cache`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Magic value of raw images: no header at all.
pub const RAW_IMAGE_MAGIC: u32 = 0;
/// `img_version` of a v1 image (type magic only, no first magic).
pub const IMAGES_V1: u32 = 1;
/// `img_version` of a v1.1 image (first magic + type magic). The only version cryo reads.
pub const IMAGES_V1_1: u32 = 2;

/// Which header precedes the entries of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// `IMG_COMMON_MAGIC` then the type magic.
    Common,
    /// `IMG_SERVICE_MAGIC` then the type magic.
    Service,
    /// Only the type magic (inventory).
    TypeOnly,
    /// No header and no entries: opaque bytes.
    Raw,
    /// Not an image file at all (the kdat cache); listed for completeness.
    NotAnImage,
}

/// How the message type of entry `index` is chosen inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Every entry is the table's message.
    Uniform,
    /// Entry 0 is `criu.pagemap_head`, the rest `criu.pagemap_entry`.
    Pagemap,
    /// Entry 0 is `criu.ghost_file_entry`; if its `chunks` is set the rest are
    /// `criu.ghost_chunk_entry`, each followed by its bytes.
    GhostFile,
}

/// Raw bytes that follow an entry's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtraKind {
    /// Nothing follows the message.
    None,
    /// The value of a varint field of the message gives the number of bytes
    /// (pipes-data and fifo-data: `bytes`; sk-queues: `length`).
    Field { number: u32, name: &'static str },
    /// `inq_len` (field 1) + `outq_len` (field 3) bytes (tcp-stream).
    TcpStream,
    /// Ghost file: without `chunks`, the whole rest of the file follows entry 0; with `chunks`,
    /// each `ghost_chunk_entry` is followed by `len` (field 1) bytes.
    GhostFile,
    /// `size` (field 2) rounded up to 4, unless `in_pagemaps` (field 3) is set (ipcns-shm).
    IpcShm,
    /// `nsems` (field 2) × u16 rounded up to 8 (ipcns-sem).
    IpcSem,
    /// `qnum` (field 3) × (u32 length, `ipc_msg`, `msize` bytes rounded up to 8) (ipcns-msg).
    IpcMsg,
    /// `keys_bytes` (field 2) + `values_bytes` (field 3) (bpfmap-data).
    BpfMapData,
}

/// One row of the magic table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Magic {
    /// Name as crit prints it (`"PAGEMAP"`), without `_MAGIC`.
    pub name: &'static str,
    /// The type magic.
    pub value: u32,
    /// The header of files of this type.
    pub header: Header,
    /// Full protobuf name of the entries (`"criu.core_entry"`), or `None` when crit has no
    /// handler (raw images, legacy signal images, binfmt-misc, pidfd).
    pub message: Option<&'static str>,
    /// Which message each entry holds.
    pub layout: Layout,
    /// What follows each entry.
    pub extra: ExtraKind,
    /// File name pattern in CRIU's image dir (`%u` decimal, `%x` hex).
    pub file: &'static str,
}

impl Magic {
    /// The message of entry `index`, given whether a ghost file is in chunk mode.
    pub fn message_at(&self, index: usize, ghost_chunks: bool) -> Option<&'static str> {
        match self.layout {
            Layout::Uniform => self.message,
            Layout::Pagemap if index == 0 => Some("criu.pagemap_head"),
            Layout::Pagemap => Some("criu.pagemap_entry"),
            Layout::GhostFile if index > 0 && ghost_chunks => Some("criu.ghost_chunk_entry"),
            Layout::GhostFile => Some("criu.ghost_file_entry"),
        }
    }

    /// Whether this type is framed into entries (it has a header and a message).
    pub fn is_framed(&self) -> bool {
        matches!(
            self.header,
            Header::Common | Header::Service | Header::TypeOnly
        )
    }

    /// The first magic written before the type magic, if any.
    pub fn first_magic(&self) -> Option<u32> {
        match self.header {
            Header::Common => Some(IMG_COMMON_MAGIC),
            Header::Service => Some(IMG_SERVICE_MAGIC),
            _ => None,
        }
    }
}

impl fmt::Display for Magic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#010x})", self.name, self.value)
    }
}

/// The canonical magic with this type value (never a raw image, never an alias).
pub fn by_value(value: u32) -> Option<&'static Magic> {
    if value == RAW_IMAGE_MAGIC {
        return None;
    }
    MAGICS.iter().find(|m| m.value == value)
}

/// The magic with this name (with or without `_MAGIC`), aliases included. Case-sensitive,
/// as crit writes names upper-case.
pub fn by_name(name: &str) -> Option<&'static Magic> {
    let name = name.strip_suffix("_MAGIC").unwrap_or(name);
    MAGICS.iter().find(|m| m.name == name)
}

/// Named lookups of the magics other crates use most, so they need no string lookup.
pub mod well_known {
    use super::{MAGICS, Magic};

    macro_rules! magic_fn {
        ($($fn_name:ident => $name:literal),* $(,)?) => {
            $(
                #[doc = concat!("The `", $name, "` magic.")]
                pub fn $fn_name() -> &'static Magic {
                    MAGICS
                        .iter()
                        .find(|m| m.name == $name)
                        .expect("the magic table lists every well-known magic")
                }
            )*
        };
    }

    magic_fn! {
        inventory => "INVENTORY",
        pstree => "PSTREE",
        fdinfo => "FDINFO",
        pagemap => "PAGEMAP",
        shmem_pagemap => "SHMEM_PAGEMAP",
        core => "CORE",
        ids => "IDS",
        pipes_data => "PIPES_DATA",
        fifo_data => "FIFO_DATA",
        sk_queues => "SK_QUEUES",
        fs => "FS",
        mm => "MM",
        files => "FILES",
        tty_info => "TTY_INFO",
        tty_data => "TTY_DATA",
        seccomp => "SECCOMP",
        timens => "TIMENS",
        stats => "STATS",
        ghost_file => "GHOST_FILE",
        tcp_stream => "TCP_STREAM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_value_returns_the_canonical_name_of_aliases() {
        assert_eq!(by_value(0x5608_4025).map(|m| m.name), Some("PAGEMAP"));
        assert_eq!(by_value(0x5925_5647).map(|m| m.name), Some("SIGNAL"));
        assert_eq!(by_value(0x6734_3323).map(|m| m.name), Some("BINFMT_MISC"));
        assert!(by_value(RAW_IMAGE_MAGIC).is_none());
        assert!(by_value(0xdead_beef).is_none());
    }

    #[test]
    fn lookup_by_name_accepts_aliases_and_the_magic_suffix() {
        let shmem = by_name("SHMEM_PAGEMAP_MAGIC").expect("alias is listed");
        assert_eq!(shmem.value, 0x5608_4025);
        assert_eq!(shmem.layout, Layout::Pagemap);
        assert_eq!(by_name("PAGES").map(|m| m.header), Some(Header::Raw));
        assert_eq!(by_name("STATS").map(|m| m.header), Some(Header::Service));
        assert!(by_name("NOPE").is_none());
    }

    #[test]
    fn canonical_values_are_unique_and_every_framed_type_names_its_message() {
        for (i, a) in MAGICS.iter().enumerate() {
            let canonical = by_value(a.value).map(|m| std::ptr::eq(m, a));
            if canonical == Some(true) {
                for b in &MAGICS[..i] {
                    assert_ne!(a.value, b.value, "{} repeats {}", a.name, b.name);
                }
            }
            if let Some(msg) = a.message {
                assert!(msg.starts_with("criu."), "{}", a.name);
            }
            assert!(by_name(a.name).is_some_and(|m| std::ptr::eq(m, a)));
        }
        assert_eq!(well_known::pstree().value, 0x5027_3030);
    }
}
