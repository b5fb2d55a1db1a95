//! `imgtool mem DIR`: a process's memory from its images — VMA table, hexdump, search, argv/env.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use regex::bytes::RegexBuilder;

use crate::analyse::hexdump;
use crate::analyse::load::LoadedSet;
use crate::analyse::memory::{Piece, ProcessMemory};
use crate::analyse::memview::{Needle, VmaFilter, read_strings, search, table};
use crate::analyse::snapshot::TaskView;
use crate::analyse::vma::{VmaKind, parse_prot_filter};

/// Show a process's memory as dumped: VMA table, hexdump, search, argv and environment.
///
/// Prints a per-VMA table (default), a hexdump (--addr), search hits (--search, --search-hex,
/// --regex), or argv/environment (--cmdline, --env) read from the process's own pages. Pages
/// in `parent` image sets are followed.
///
/// The table lists per VMA: range, size, protection, kind and file, and where the pages are:
/// in this set's pages image, in a parent, lazy (on a page server), or not dumped (zero for
/// anonymous memory, file contents for file mappings).
#[derive(Debug, Args)]
pub struct MemArgs {
    /// The image directory.
    pub dir: PathBuf,
    /// The process (default: the root of the tree).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Hexdump START[+LEN] (hex with 0x, or decimal; LEN defaults to 256).
    #[arg(long, value_name = "START[+LEN]")]
    pub addr: Option<String>,
    /// Find this string.
    #[arg(long, value_name = "STR", group = "needle")]
    pub search: Option<String>,
    /// Find these bytes, written in hex (`0500000000 00dec0`; spaces ignored).
    #[arg(long, value_name = "HEX", group = "needle")]
    pub search_hex: Option<String>,
    /// Find matches of this regular expression (over bytes).
    #[arg(long, value_name = "RE", group = "needle")]
    pub regex: Option<String>,
    /// Bytes of context shown either side of a hit.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 16)]
    pub context: usize,
    /// Stop after this many hits.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_hits: usize,
    /// Print argv, read from mm_arg_start..mm_arg_end.
    #[arg(long)]
    pub cmdline: bool,
    /// Print the environment, read from mm_env_start..mm_env_end.
    #[arg(long)]
    pub env: bool,
    /// Only VMAs of this kind (repeatable): stack, heap, vdso, vvar, vsyscall, anon,
    /// anon_shared, file, file_shared, sysvipc, socket, aio, memfd, other.
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<VmaKind>,
    /// Only VMAs with at least this protection (`rw`, `r-x`, `x`).
    #[arg(long, value_name = "RWX", value_parser = parse_prot_filter)]
    pub prot: Option<u32>,
    /// Only VMAs overlapping START-END (hex with 0x, or decimal; END exclusive).
    #[arg(long, value_name = "START-END")]
    pub within: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &MemArgs) -> anyhow::Result<()> {
    let loaded = LoadedSet::open(&args.dir)
        .with_context(|| format!("cannot open image set {}", args.dir.display()))?;
    let snapshot = loaded
        .snapshot()
        .with_context(|| format!("cannot load image set {}", args.dir.display()))?;
    let pid = args.pid.unwrap_or(loaded.tree[0].pid);
    let Some(task) = snapshot.tasks.get(&pid) else {
        let pids: Vec<String> = snapshot.tasks.keys().map(u32::to_string).collect();
        bail!(
            "no process {pid} in {} (processes: {})",
            args.dir.display(),
            pids.join(", ")
        );
    };
    let within = match &args.within {
        Some(text) => {
            let (start, end) = text
                .split_once('-')
                .with_context(|| format!("--within {text:?}: expected START-END"))?;
            Some(parse_number(start)?..parse_number(end)?)
        }
        None => None,
    };
    let filter = VmaFilter {
        kinds: args.kind.clone(),
        prot: args.prot.unwrap_or(0),
        within,
    };

    let mut out = std::io::stdout().lock();
    if args.cmdline || args.env {
        print_strings(&mut out, task, args)?;
    } else if let Some(needle) = needle(args)? {
        let hits = search(&task.memory, &filter, &needle, args.context, args.max_hits)?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&hits)?)?;
        } else {
            for hit in &hits {
                writeln!(
                    out,
                    "{:#x}  {}  [{:#x}] {}",
                    hit.vaddr, hit.vma, hit.context_vaddr, hit.context
                )?;
            }
            writeln!(out, "{} hit(s)", hits.len())?;
        }
    } else if let Some(addr) = &args.addr {
        let (start, len) = parse_addr(addr)?;
        write_hexdump(&mut out, &task.memory, start, len)?;
    } else {
        print_table(&mut out, task, &filter, args.json)?;
    }
    Ok(())
}

fn needle(args: &MemArgs) -> anyhow::Result<Option<Needle>> {
    if let Some(text) = &args.search {
        return Ok(Some(Needle::Bytes(text.as_bytes().to_vec())));
    }
    if let Some(hex) = &args.search_hex {
        return Ok(Some(Needle::Bytes(parse_hex(hex)?)));
    }
    if let Some(pattern) = &args.regex {
        let regex = RegexBuilder::new(pattern)
            .unicode(false)
            .build()
            .with_context(|| format!("bad regular expression {pattern:?}"))?;
        return Ok(Some(Needle::Regex(regex)));
    }
    Ok(None)
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        bail!("--search-hex {text:?}: need an even, non-zero number of hex digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(&digits[at..at + 2], 16).with_context(|| {
                format!(
                    "--search-hex {text:?}: {:?} is not hex",
                    &digits[at..at + 2]
                )
            })
        })
        .collect()
}

fn parse_number(text: &str) -> anyhow::Result<u64> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("{text:?} is not a number (hex needs 0x)"))
}

/// Parses `START[+LEN]`.
fn parse_addr(text: &str) -> anyhow::Result<(u64, u64)> {
    let (start, len) = match text.split_once('+') {
        Some((start, len)) => (parse_number(start)?, parse_number(len)?),
        None => (parse_number(text)?, 256),
    };
    if len > 1 << 30 {
        bail!("--addr {text}: length above 1 GiB");
    }
    Ok((start, len))
}

fn write_hexdump(
    out: &mut impl Write,
    memory: &ProcessMemory<'_>,
    start: u64,
    len: u64,
) -> anyhow::Result<()> {
    for piece in memory.pieces(start, len) {
        match piece {
            Piece::Bytes { vaddr, bytes } => {
                out.write_all(hexdump::render(vaddr, bytes).as_bytes())?
            }
            Piece::Missing { vaddr, len } => {
                let why = match memory.vma_at(vaddr) {
                    None => "outside every VMA".to_owned(),
                    Some(vma) if vma.kind.is_anonymous() => {
                        format!("not dumped: zero-filled {}", vma.kind)
                    }
                    Some(vma) => format!("not dumped: contents of {}", vma.label()),
                };
                writeln!(out, "{vaddr:016x}  -- {len} bytes {why} --")?;
            }
        }
    }
    Ok(())
}

fn print_strings(out: &mut impl Write, task: &TaskView<'_>, args: &MemArgs) -> anyhow::Result<()> {
    let memory = &task.memory;
    let argv = if args.cmdline {
        Some(read_strings(memory, memory.arg.clone(), "argv")?)
    } else {
        None
    };
    let env = if args.env {
        Some(read_strings(memory, memory.env.clone(), "environment")?)
    } else {
        None
    };
    let lossy = |strings: &Vec<Vec<u8>>| -> Vec<String> {
        strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };

    if args.json {
        let mut doc = serde_json::Map::new();
        doc.insert("pid".into(), task.pid.into());
        if let Some(argv) = &argv {
            doc.insert("argv".into(), lossy(argv).into());
        }
        if let Some(env) = &env {
            doc.insert("env".into(), lossy(env).into());
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    if let Some(argv) = &argv {
        for arg in lossy(argv) {
            writeln!(out, "{arg}")?;
        }
    }
    if let (Some(_), Some(_)) = (&argv, &env) {
        writeln!(out)?;
    }
    if let Some(env) = &env {
        for var in lossy(env) {
            writeln!(out, "{var}")?;
        }
    }
    Ok(())
}

fn print_table(
    out: &mut impl Write,
    task: &TaskView<'_>,
    filter: &VmaFilter,
    json: bool,
) -> anyhow::Result<()> {
    let rows = table(&task.memory, filter);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(out, "process {} ({})", task.pid, task.comm)?;
    writeln!(
        out,
        "{:<33} {:>10} {:<4} {:>8} {:>8} {:>8} {:>6} {:>12}  what",
        "range", "size", "prot", "resident", "pages", "parent", "lazy", "not dumped"
    )?;
    for row in &rows {
        let range = format!("{:x}-{:x}", row.start, row.end);
        let what = match &row.path {
            Some(path) => format!("{} {path}", row.kind),
            None => row.kind.clone(),
        };
        writeln!(
            out,
            "{range:<33} {:>10} {:<4} {:>8} {:>8} {:>8} {:>6} {:>7} {:<4}  {what}",
            human_size(row.size),
            row.prot,
            row.resident,
            row.in_pages,
            row.in_parent,
            row.lazy,
            row.not_dumped,
            row.not_dumped_is,
        )?;
    }
    let resident: u64 = rows.iter().map(|row| row.resident).sum();
    writeln!(
        out,
        "{} VMAs, {resident} resident pages ({})",
        rows.len(),
        human_size(resident * 4096)
    )?;
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
