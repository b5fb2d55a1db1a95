//! The rows of the magic table: every magic of CRIU's `magic.h` (values are facts of the
//! format), with the message and extra payload of each image type.

use super::{ExtraKind, Header, Layout, Magic, RAW_IMAGE_MAGIC};

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
