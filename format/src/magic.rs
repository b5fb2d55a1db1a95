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

use std::fmt;

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

const fn common(
    name: &'static str,
    value: u32,
    message: &'static str,
    file: &'static str,
) -> Magic {
    Magic {
        name,
        value,
        header: Header::Common,
        message: Some(message),
        layout: Layout::Uniform,
        extra: ExtraKind::None,
        file,
    }
}

const fn with_extra(m: Magic, extra: ExtraKind) -> Magic {
    Magic { extra, ..m }
}

const fn without_message(m: Magic) -> Magic {
    Magic { message: None, ..m }
}

const fn raw(name: &'static str, file: &'static str) -> Magic {
    Magic {
        name,
        value: RAW_IMAGE_MAGIC,
        header: Header::Raw,
        message: None,
        layout: Layout::Uniform,
        extra: ExtraKind::None,
        file,
    }
}

/// Every magic, canonical names before their aliases (lookup by value takes the first match).
pub static MAGICS: &[Magic] = &[
    Magic {
        header: Header::TypeOnly,
        ..common(
            "INVENTORY",
            0x5831_3116,
            "criu.inventory_entry",
            "inventory.img",
        )
    },
    common("PSTREE", 0x5027_3030, "criu.pstree_entry", "pstree.img"),
    common("FDINFO", 0x5621_3732, "criu.fdinfo_entry", "fdinfo-%u.img"),
    Magic {
        layout: Layout::Pagemap,
        ..common(
            "PAGEMAP",
            0x5608_4025,
            "criu.pagemap_entry",
            "pagemap-%lu.img",
        )
    },
    common("CORE", 0x5505_3847, "criu.core_entry", "core-%u.img"),
    common("IDS", 0x5443_2030, "criu.task_kobj_ids_entry", "ids-%u.img"),
    common("VMAS", 0x5412_3737, "criu.vma_entry", "vmas-%u.img"),
    common("PIPES", 0x5651_3555, "criu.pipe_entry", "pipes.img"),
    with_extra(
        common(
            "PIPES_DATA",
            0x5645_3709,
            "criu.pipe_data_entry",
            "pipes-data.img",
        ),
        ExtraKind::Field {
            number: 2,
            name: "bytes",
        },
    ),
    common("FIFO", 0x5836_4939, "criu.fifo_entry", "fifo.img"),
    with_extra(
        common(
            "FIFO_DATA",
            0x5933_3054,
            "criu.pipe_data_entry",
            "fifo-data.img",
        ),
        ExtraKind::Field {
            number: 2,
            name: "bytes",
        },
    ),
    common("SIGACT", 0x5534_4201, "criu.sa_entry", "sigacts-%u.img"),
    common("UNIXSK", 0x5437_3943, "criu.unix_sk_entry", "unixsk.img"),
    common("INETSK", 0x5644_3851, "criu.inet_sk_entry", "inetsk.img"),
    common(
        "PACKETSK",
        0x6045_4618,
        "criu.packet_sock_entry",
        "packetsk.img",
    ),
    common(
        "ITIMERS",
        0x5746_4056,
        "criu.itimer_entry",
        "itimers-%u.img",
    ),
    common(
        "POSIX_TIMERS",
        0x5260_3957,
        "criu.posix_timer_entry",
        "posix-timers-%u.img",
    ),
    with_extra(
        common(
            "SK_QUEUES",
            0x5626_4026,
            "criu.sk_packet_entry",
            "sk-queues.img",
        ),
        ExtraKind::Field {
            number: 2,
            name: "length",
        },
    ),
    common("UTSNS", 0x5447_3203, "criu.utsns_entry", "utsns-%u.img"),
    common("CREDS", 0x5402_3547, "criu.creds_entry", "creds-%u.img"),
    common(
        "IPC_VAR",
        0x5311_5007,
        "criu.ipc_var_entry",
        "ipcns-var-%u.img",
    ),
    with_extra(
        common(
            "IPCNS_SHM",
            0x4628_3044,
            "criu.ipc_shm_entry",
            "ipcns-shm-%u.img",
        ),
        ExtraKind::IpcShm,
    ),
    with_extra(
        common(
            "IPCNS_MSG",
            0x5545_3737,
            "criu.ipc_msg_entry",
            "ipcns-msg-%u.img",
        ),
        ExtraKind::IpcMsg,
    ),
    with_extra(
        common(
            "IPCNS_SEM",
            0x5957_3019,
            "criu.ipc_sem_entry",
            "ipcns-sem-%u.img",
        ),
        ExtraKind::IpcSem,
    ),
    common(
        "REG_FILES",
        0x5036_3636,
        "criu.reg_file_entry",
        "reg-files.img",
    ),
    common(
        "EXT_FILES",
        0x5925_5641,
        "criu.ext_file_entry",
        "ext-files.img",
    ),
    common("FS", 0x5140_3912, "criu.fs_entry", "fs-%u.img"),
    common("MM", 0x5749_2820, "criu.mm_entry", "mm-%u.img"),
    common(
        "REMAP_FPATH",
        0x5913_3954,
        "criu.remap_file_path_entry",
        "remap-fpath.img",
    ),
    Magic {
        layout: Layout::GhostFile,
        extra: ExtraKind::GhostFile,
        ..common(
            "GHOST_FILE",
            0x5258_3605,
            "criu.ghost_file_entry",
            "ghost-file-%x.img",
        )
    },
    with_extra(
        common(
            "TCP_STREAM",
            0x5146_5506,
            "criu.tcp_stream_entry",
            "tcp-stream-%x.img",
        ),
        ExtraKind::TcpStream,
    ),
    common(
        "EVENTFD_FILE",
        0x4452_3722,
        "criu.eventfd_file_entry",
        "eventfd.img",
    ),
    common(
        "EVENTPOLL_FILE",
        0x4502_3858,
        "criu.eventpoll_file_entry",
        "eventpoll.img",
    ),
    common(
        "EVENTPOLL_TFD",
        0x4443_3746,
        "criu.eventpoll_tfd_entry",
        "eventpoll-tfd.img",
    ),
    common(
        "SIGNALFD",
        0x5732_3820,
        "criu.signalfd_entry",
        "signalfd.img",
    ),
    common(
        "INOTIFY_FILE",
        0x4842_4431,
        "criu.inotify_file_entry",
        "inotify.img",
    ),
    common(
        "INOTIFY_WD",
        0x5456_2009,
        "criu.inotify_wd_entry",
        "inotify-wd.img",
    ),
    common("MNTS", 0x5556_3928, "criu.mnt_entry", "mountpoints-%u.img"),
    common(
        "NETDEV",
        0x5737_3951,
        "criu.net_device_entry",
        "netdev-%u.img",
    ),
    common("NETNS", 0x5593_3752, "criu.netns_entry", "netns-%u.img"),
    common("TTY_FILES", 0x5943_3025, "criu.tty_file_entry", "tty.img"),
    common(
        "TTY_INFO",
        0x5945_3036,
        "criu.tty_info_entry",
        "tty-info.img",
    ),
    common(
        "TTY_DATA",
        0x5941_3026,
        "criu.tty_data_entry",
        "tty-data.img",
    ),
    common(
        "FILE_LOCKS",
        0x5432_3616,
        "criu.file_lock_entry",
        "filelocks.img",
    ),
    common("RLIMIT", 0x5711_3925, "criu.rlimit_entry", "rlimit-%u.img"),
    common(
        "FANOTIFY_FILE",
        0x5509_6122,
        "criu.fanotify_file_entry",
        "fanotify.img",
    ),
    common(
        "FANOTIFY_MARK",
        0x5650_6035,
        "criu.fanotify_mark_entry",
        "fanotify-mark.img",
    ),
    without_message(common("SIGNAL", 0x5925_5647, "", "signal-s-%u.img")),
    common(
        "NETLINK_SK",
        0x5800_5614,
        "criu.netlink_sk_entry",
        "netlinksk.img",
    ),
    common(
        "NS_FILES",
        0x6139_4011,
        "criu.ns_file_entry",
        "ns-files.img",
    ),
    common("TUNFILE", 0x5714_3751, "criu.tunfile_entry", "tunfile.img"),
    common("CGROUP", 0x5938_3330, "criu.cgroup_entry", "cgroup.img"),
    common("TIMERFD", 0x5049_3712, "criu.timerfd_entry", "timerfd.img"),
    common("CPUINFO", 0x6140_4013, "criu.cpuinfo_entry", "cpuinfo.img"),
    common("USERNS", 0x5547_4906, "criu.userns_entry", "userns-%u.img"),
    common("SECCOMP", 0x6441_3049, "criu.seccomp_entry", "seccomp.img"),
    without_message(common("BINFMT_MISC", 0x6734_3323, "", "binfmt-misc.img")),
    common("AUTOFS", 0x4935_3943, "criu.autofs_entry", "autofs-%u.img"),
    common("FILES", 0x5630_3138, "criu.file_entry", "files.img"),
    common(
        "MEMFD_INODE",
        0x4845_3499,
        "criu.memfd_inode_entry",
        "memfd.img",
    ),
    common("TIMENS", 0x4311_4433, "criu.timens_entry", "timens-%u.img"),
    common("PIDNS", 0x6115_7326, "criu.pidns_entry", "pidns-%u.img"),
    common(
        "BPFMAP_FILE",
        0x5750_6142,
        "criu.bpfmap_file_entry",
        "bpfmap-file.img",
    ),
    with_extra(
        common(
            "BPFMAP_DATA",
            0x6432_4033,
            "criu.bpfmap_data_entry",
            "bpfmap-data.img",
        ),
        ExtraKind::BpfMapData,
    ),
    common(
        "APPARMOR",
        0x5942_3047,
        "criu.apparmor_entry",
        "apparmor.img",
    ),
    without_message(common("PIDFD", 0x5443_5556, "", "pidfd.img")),
    Magic {
        header: Header::Service,
        ..common("STATS", 0x5709_3306, "criu.stats_entry", "stats-dump")
    },
    Magic {
        header: Header::Service,
        ..common(
            "IRMAP_CACHE",
            0x5700_4059,
            "criu.irmap_cache_entry",
            "irmap-cache",
        )
    },
    Magic {
        header: Header::NotAnImage,
        message: None,
        ..common("KDAT", 0x5702_3458, "", "criu.kdat")
    },
    // Aliases: same value as an entry above, found by name only.
    Magic {
        layout: Layout::Pagemap,
        ..common(
            "SHMEM_PAGEMAP",
            0x5608_4025,
            "criu.pagemap_entry",
            "pagemap-shmem-%lu.img",
        )
    },
    without_message(common("PSIGNAL", 0x5925_5647, "", "signal-p-%u.img")),
    without_message(common(
        "BINFMT_MISC_OLD",
        0x6734_3323,
        "",
        "binfmt-misc-%u.img",
    )),
    without_message(common("PAGES_OLD", 0x5608_4025, "", "pages-%d.img")),
    without_message(common(
        "SHM_PAGES_OLD",
        0x5608_4025,
        "",
        "pages-shmem-%ld.img",
    )),
    // Raw images: no header, found by name only.
    raw("PAGES", "pages-%u.img"),
    raw("IFADDR", "ifaddr-%u.img"),
    raw("ROUTE", "route-%u.img"),
    raw("ROUTE6", "route6-%u.img"),
    raw("RULE", "rule-%u.img"),
    raw("IPTABLES", "iptables-%u.img"),
    raw("IP6TABLES", "ip6tables-%u.img"),
    raw("NFTABLES", "nftables-%u.img"),
    raw("TMPFS_IMG", "tmpfs-%u.tar.gz.img"),
    raw("TMPFS_DEV", "tmpfs-dev-%u.tar.gz.img"),
    raw("NETNF_CT", "netns-ct-%u.img"),
    raw("NETNF_EXP", "netns-exp-%u.img"),
];

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
