//! crit's display options (`(criu).hex`, `flags`, `dev`, `dict`, `ipadd`, `conv`) and the
//! tables behind them.
//!
//! The options are declared in `format/proto/opts.proto`; cryo-format extracts them at
//! build time into a static table ([`cryo_format::schema::field_display`]), so looking one
//! up is a binary search over a few dozen names and nothing is parsed at run time.
//!
//! The flag and value tables are crit's (`pycriu/images/pb2dict.py`), with one deliberate
//! difference: task states 3 and 6 are `Stopped` and `Zombie`, as CRIU defines them; crit
//! has the two names swapped.

pub use cryo_format::schema::FieldDisplay as FieldOpts;
use prost_reflect::FieldDescriptor;

static NONE: FieldOpts = FieldOpts {
    hex: false,
    ipadd: false,
    flags: None,
    dev: false,
    odev: false,
    dict: None,
    conv: None,
};

/// The options of `field` (all unset for fields without a `(criu)` option).
pub fn of(field: &FieldDescriptor) -> &'static FieldOpts {
    cryo_format::schema::field_display(field.full_name()).unwrap_or(&NONE)
}

/// A bit-flag table: names in the order crit prints them.
pub type FlagTable = &'static [(&'static str, u64)];

/// The flag table called `name`, if crit knows it.
pub fn flag_table(name: &str) -> Option<FlagTable> {
    Some(match name {
        "mmap.prot" => &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)],
        "mmap.flags" => &[
            ("MAP_SHARED", 0x1),
            ("MAP_PRIVATE", 0x2),
            ("MAP_DROPPABLE", 0x08),
            ("MAP_ANON", 0x20),
            ("MAP_GROWSDOWN", 0x0100),
        ],
        "mmap.status" => &[
            ("VMA_AREA_NONE", 0),
            ("VMA_AREA_REGULAR", 1 << 0),
            ("VMA_AREA_STACK", 1 << 1),
            ("VMA_AREA_VSYSCALL", 1 << 2),
            ("VMA_AREA_VDSO", 1 << 3),
            ("VMA_AREA_HEAP", 1 << 5),
            ("VMA_FILE_PRIVATE", 1 << 6),
            ("VMA_FILE_SHARED", 1 << 7),
            ("VMA_ANON_SHARED", 1 << 8),
            ("VMA_ANON_PRIVATE", 1 << 9),
            ("VMA_AREA_SYSVIPC", 1 << 10),
            ("VMA_AREA_SOCKET", 1 << 11),
            ("VMA_AREA_VVAR", 1 << 12),
            ("VMA_AREA_AIORING", 1 << 13),
            ("VMA_AREA_MEMFD", 1 << 14),
            ("VMA_AREA_SHSTK", 1 << 15),
            ("VMA_AREA_UPROBES", 1 << 17),
            ("VMA_UNSUPP", 1 << 31),
        ],
        "rfile.flags" => &[
            ("O_WRONLY", 0o1),
            ("O_RDWR", 0o2),
            ("O_CREAT", 0o100),
            ("O_EXCL", 0o200),
            ("O_NOCTTY", 0o400),
            ("O_TRUNC", 0o1000),
            ("O_APPEND", 0o2000),
            ("O_NONBLOCK", 0o4000),
            ("O_DSYNC", 0o10000),
            ("FASYNC", 0o20000),
            ("O_DIRECT", 0o40000),
            ("O_LARGEFILE", 0o100000),
            ("O_DIRECTORY", 0o200000),
            ("O_NOFOLLOW", 0o400000),
            ("O_NOATIME", 0o1000000),
            ("O_CLOEXEC", 0o2000000),
        ],
        "pmap.flags" => &[("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)],
        "seals.flags" => &[
            ("F_SEAL_SEAL", 1),
            ("F_SEAL_SHRINK", 2),
            ("F_SEAL_GROW", 4),
            ("F_SEAL_WRITE", 8),
            ("F_SEAL_FUTURE_WRITE", 0x10),
        ],
        _ => return None,
    })
}

/// `value` as crit prints flags: known names joined by `" | "` in table order, leftover
/// bits as one trailing `0x..`, and `""` for zero.
pub fn map_flags(value: u64, table: FlagTable) -> String {
    let mut parts: Vec<String> = table
        .iter()
        .filter(|(_, bit)| value & bit != 0)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let known = table.iter().fold(0, |acc, (_, bit)| acc | bit);
    let rest = value & !known;
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join(" | ")
}

/// Inverse of [`map_flags`]: each `|`-separated part is a table name or an integer
/// literal (python `int(x, 0)` syntax); the parts are summed, like crit does.
pub fn unmap_flags(text: &str, table: FlagTable) -> Option<u64> {
    if text.is_empty() {
        return Some(0);
    }
    text.split('|').map(str::trim).try_fold(0u64, |acc, part| {
        let bits = match table.iter().find(|(name, _)| *name == part) {
            Some((_, bit)) => *bit,
            None => u64::try_from(parse_int(part)?).ok()?,
        };
        acc.checked_add(bits)
    })
}

/// The value table `dict` for the field called `field` (crit keys its tables by field name).
pub fn dict_table(dict: &str, field: &str) -> Option<&'static [(u64, &'static str)]> {
    Some(match (dict, field) {
        ("gen", "task_state") => &[(1, "Alive"), (3, "Stopped"), (6, "Zombie")],
        ("sk", "family") => &[
            (1, "UNIX"),
            (2, "INET"),
            (10, "INET6"),
            (16, "NETLINK"),
            (17, "PACKET"),
        ],
        ("sk", "type") => &[
            (1, "STREAM"),
            (2, "DGRAM"),
            (3, "RAW"),
            (5, "SEQPACKET"),
            (10, "PACKET"),
        ],
        ("sk", "state") => &[
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
        ],
        ("sk", "proto") => &[(0, "IP"), (6, "TCP"), (17, "UDP"), (136, "UDPLITE")],
        _ => return None,
    })
}

/// `"major:minor"` of a device number: the kernel's encoding (minor in the low 20 bits) or,
/// with `odev`, glibc's userspace `dev_t` layout.
pub fn format_dev(value: u64, odev: bool) -> String {
    let (major, minor) = if odev {
        (
            ((value >> 8) & 0xfff) | ((value >> 32) & !0xfff),
            (value & 0xff) | ((value >> 12) & !0xff),
        )
    } else {
        (value >> 20, value & 0xf_ffff)
    };
    format!("{major}:{minor}")
}

/// Inverse of [`format_dev`].
pub fn parse_dev(text: &str, odev: bool) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major: u64 = major.trim().parse().ok()?;
    let minor: u64 = minor.trim().parse().ok()?;
    if odev {
        Some(
            ((major & 0xfff) << 8)
                | ((major & !0xfff) << 32)
                | (minor & 0xff)
                | ((minor & !0xff) << 12),
        )
    } else {
        Some((major << 20) | minor)
    }
}

/// An integer literal as python's `int(text, 0)` reads it: optional sign, `0x`/`0o`/`0b`
/// prefixes, `_` between digits, surrounding whitespace; no leading zeros in decimals.
pub fn parse_int(text: &str) -> Option<i128> {
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = t.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        if lower.len() > 1 && lower.starts_with('0') && lower.bytes().any(|b| b != b'0') {
            return None;
        }
        (10, lower.as_str())
    };
    let digits = digits.strip_prefix('_').unwrap_or(digits);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    let magnitude = i128::from_str_radix(&cleaned, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_and_parse_like_crit() {
        let table = flag_table("mmap.status").unwrap();
        let text = map_flags(1 | 2 | (1 << 9) | 0x10_0000, table);
        assert_eq!(
            text,
            "VMA_AREA_REGULAR | VMA_AREA_STACK | VMA_ANON_PRIVATE | 0x100000"
        );
        assert_eq!(
            unmap_flags(&text, table),
            Some(1 | 2 | (1 << 9) | 0x10_0000)
        );
        assert_eq!(map_flags(0, flag_table("rfile.flags").unwrap()), "");
        assert_eq!(unmap_flags("", table), Some(0));
        assert_eq!(unmap_flags("NOT_A_FLAG", table), None);
    }

    #[test]
    fn dev_numbers_use_kernel_and_glibc_layouts() {
        assert_eq!(format_dev((8 << 20) | 1, false), "8:1");
        assert_eq!(parse_dev("8:1", false), Some((8 << 20) | 1));
        let glibc = parse_dev("259:70000", true).unwrap();
        assert_eq!(format_dev(glibc, true), "259:70000");
    }

    #[test]
    fn integers_parse_like_python_int_base_0() {
        assert_eq!(parse_int("0x7f00"), Some(0x7f00));
        assert_eq!(parse_int("-0x1"), Some(-1));
        assert_eq!(parse_int(" 42 "), Some(42));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("010"), None);
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int("abc"), None);
    }

    #[test]
    fn schema_options_are_read_from_the_pool() {
        let pool = cryo_format::schema::descriptor_pool();
        let vma = pool.get_message_by_name("criu.vma_entry").unwrap();
        assert!(of(&vma.get_field_by_name("start").unwrap()).hex);
        assert_eq!(
            of(&vma.get_field_by_name("status").unwrap()).flags,
            Some("mmap.status")
        );
        assert_eq!(
            of(&vma.get_field_by_name("pgoff").unwrap()),
            &FieldOpts::default()
        );
        let ghost = pool.get_message_by_name("criu.ghost_file_entry").unwrap();
        let rdev = of(&ghost.get_field_by_name("rdev").unwrap());
        assert!(rdev.dev && rdev.odev);
    }
}
