//! `imgtool x DIR ps|fds|mems|rss`: crit's explorers over a whole image directory.
//!
//! The text output follows python crit's explorers line for line. Images are read with
//! the typed schema structs (no JSON in between), which is where the speed comes from.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cryo_format::ImageFile;
use cryo_format::schema::descriptor_pool_for;
use cryo_format::schema::{
    CoreEntry, FdinfoEntry, FileEntry, FsEntry, MmEntry, PagemapEntry, PstreeEntry,
    TaskKobjIdsEntry,
};

use crate::json::image::check_entry;
use crate::json::output;
use crate::json::render::quoted_printable;

/// Explore an image directory like `crit x` (same text output; `fd` and `mem` are accepted
/// as go-crit spells them).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image directory.
    pub dir: PathBuf,
    /// What to show.
    #[arg(value_enum)]
    pub what: What,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// The process tree: PID, PGID, SID and command, children indented.
    Ps,
    /// Open files of each process, with cwd and root.
    #[value(alias = "fd")]
    Fds,
    /// The memory mappings of each process.
    #[value(alias = "mem")]
    Mems,
    /// Resident pages (pagemap entries) against the mappings they fall in.
    Rss,
}

pub fn run(args: &Args) -> Result<()> {
    let set = Set::open(&args.dir)?;
    let text = match args.what {
        What::Ps => ps(&set)?,
        What::Fds => fds(&set)?,
        What::Mems => mems(&set)?,
        What::Rss => rss(&set)?,
    };
    output::write_stdout(text.as_bytes()).context("cannot write stdout")
}

/// The entries of the image at `path` from index `skip` on, as `M`, with required fields
/// checked. The check uses a schema of only this image type's `.proto` files (see
/// `descriptor_pool_for`), which keeps a one-shot `x` as cheap as the images it reads.
fn read_entries<M: prost::Message + Default>(path: &Path, skip: usize) -> Result<Vec<M>> {
    let image = ImageFile::open(path)?;
    let magic = image.magic();
    let pool = magic.message.and_then(descriptor_pool_for);
    let mut out = Vec::new();
    for entry in image.entries().skip(skip) {
        let entry = entry?;
        // check_entry checks the encoding and required fields and names the bad field.
        if let Some(pool) = &pool {
            check_entry(pool, path, &entry)?;
        } else {
            image.check(&entry)?;
        }
        let msg = M::decode(entry.payload).with_context(|| {
            format!(
                "image {}, entry {}: cannot decode",
                path.display(),
                entry.index
            )
        })?;
        out.push(msg);
    }
    Ok(out)
}

const VMA_AREA_REGULAR: u32 = 1 << 0;
const VMA_AREA_STACK: u32 = 1 << 1;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_ANON_SHARED: u32 = 1 << 8;
const VMA_AREA_SYSVIPC: u32 = 1 << 10;
const VMA_AREA_SOCKET: u32 = 1 << 11;
const MAP_GROWSDOWN: u32 = 0x100;

/// The images every explorer starts from.
struct Set {
    dir: PathBuf,
    tree: Vec<PstreeEntry>,
    files: Option<HashMap<u32, FileEntry>>,
}

impl Set {
    fn open(dir: &Path) -> Result<Self> {
        let tree = read_entries::<PstreeEntry>(&dir.join("pstree.img"), 0)?;
        Ok(Set {
            dir: dir.to_owned(),
            tree,
            files: None,
        })
    }

    fn one<M: prost::Message + Default>(&self, name: &str) -> Result<M> {
        let path = self.dir.join(name);
        let mut all = read_entries::<M>(&path, 0)?;
        if all.len() != 1 {
            bail!(
                "image {} holds {} entries, expected exactly one",
                path.display(),
                all.len()
            );
        }
        Ok(all.remove(0))
    }

    fn all<M: prost::Message + Default>(&self, name: &str) -> Result<Vec<M>> {
        read_entries(&self.dir.join(name), 0)
    }

    /// The same set with `files.img` loaded, for explorers that describe file objects.
    fn with_files(&self) -> Result<Set> {
        let files = self.all::<FileEntry>("files.img")?;
        Ok(Set {
            dir: self.dir.clone(),
            tree: self.tree.clone(),
            files: Some(files.into_iter().map(|f| (f.id, f)).collect()),
        })
    }

    /// crit's description of the file object `id` of type `kind`.
    fn file_str(&self, kind: &str, id: u32) -> String {
        let found = self.files.as_ref().and_then(|f| f.get(&id));
        let described = found.and_then(|f| match kind {
            "REG" => f.reg.as_ref().map(|r| r.name.clone()),
            "PIPE" => f.pipe.as_ref().map(|p| format!("pipe[{}]", p.pipe_id)),
            "UNIXSK" => f
                .usk
                .as_ref()
                .map(|u| format!("unix[{} ({}) {}]", u.ino, u.peer, quoted_printable(&u.name))),
            _ => None,
        });
        described.unwrap_or_else(|| format!("{kind}.{id}"))
    }
}

fn ps(set: &Set) -> Result<String> {
    let Some(root) = set.tree.iter().position(|p| p.ppid == 0) else {
        bail!(
            "{}: no process with ppid 0",
            set.dir.join("pstree.img").display()
        );
    };
    let mut comms = HashMap::new();
    for p in &set.tree {
        let core: CoreEntry = set.one(&format!("core-{}.img", p.pid))?;
        let comm = core.tc.map(|tc| tc.comm).unwrap_or_default();
        comms.insert(p.pid, comm);
    }

    let mut out = format!("{:>7}{:>7}{:>7}   {}\n", "PID", "PGID", "SID", "COMM");
    // Depth-first from the root; children in pstree order. `seen` guards against cycles.
    let mut stack = vec![(root, 0usize)];
    let mut seen = vec![false; set.tree.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let p = &set.tree[i];
        let _ = writeln!(
            out,
            "{:>7}{:>7}{:>7}   {}{}",
            p.pid,
            p.pgid,
            p.sid,
            " ".repeat(4 * depth),
            comms[&p.pid]
        );
        let kids: Vec<usize> = (0..set.tree.len())
            .filter(|&k| set.tree[k].ppid == p.pid && k != i)
            .collect();
        stack.extend(kids.into_iter().rev().map(|k| (k, depth + 1)));
    }
    Ok(out)
}

fn fds(set: &Set) -> Result<String> {
    let set = &set.with_files()?;

    let mut out = String::new();
    for p in &set.tree {
        let ids: TaskKobjIdsEntry = set.one(&format!("ids-{}.img", p.pid))?;
        let fdinfo: Vec<FdinfoEntry> = set.all(&format!("fdinfo-{}.img", ids.files_id))?;
        let _ = writeln!(out, "{}", p.pid);
        for fd in &fdinfo {
            let kind = fd.r#type().as_str_name();
            let _ = writeln!(out, "\t{:>7}: {}", fd.fd, set.file_str(kind, fd.id));
        }
        let fs: FsEntry = set.one(&format!("fs-{}.img", p.pid))?;
        let _ = writeln!(out, "\t{:>7}: {}", "cwd", set.file_str("REG", fs.cwd_id));
        let _ = writeln!(out, "\t{:>7}: {}", "root", set.file_str("REG", fs.root_id));
    }
    Ok(out)
}

fn mems(set: &Set) -> Result<String> {
    let set = &set.with_files()?;

    // Shared memory ids are renumbered 1, 2, 3... in order of first appearance.
    let mut shm_ids: HashMap<u64, u64> = HashMap::new();
    let mut renumber = |shmid: u64| {
        let next = shm_ids.len() as u64 + 1;
        *shm_ids.entry(shmid).or_insert(next)
    };

    let mut out = String::new();
    for p in &set.tree {
        let mm: MmEntry = set.one(&format!("mm-{}.img", p.pid))?;
        let _ = writeln!(out, "{}", p.pid);
        let _ = writeln!(
            out,
            "\t{:<36}    {}",
            "exe",
            set.file_str("REG", mm.exe_file_id)
        );
        for vma in &mm.vmas {
            let st = vma.status;
            let mut tag = if st & VMA_AREA_SYSVIPC != 0 {
                format!(" ips[{:x}]", renumber(vma.shmid))
            } else if st & VMA_ANON_SHARED != 0 {
                format!(" shmem[{:x}]", renumber(vma.shmid))
            } else if st & VMA_AREA_SOCKET != 0 {
                format!(" packet[{:x}]", renumber(vma.shmid))
            } else if st & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                let mut t = format!(" {}", set.file_str("REG", vma.shmid as u32));
                if vma.pgoff != 0 {
                    let _ = write!(t, " + {:#x}", vma.pgoff);
                }
                if st & VMA_FILE_SHARED != 0 {
                    t.push_str(" (s)");
                }
                t
            } else if st & VMA_AREA_STACK != 0 {
                " [stack]".to_owned()
            } else if st & VMA_AREA_VSYSCALL != 0 {
                " [vsyscall]".to_owned()
            } else if st & VMA_AREA_VDSO != 0 {
                " [vdso]".to_owned()
            } else if vma.flags & MAP_GROWSDOWN != 0 {
                " [stack?]".to_owned()
            } else {
                String::new()
            };
            if st & VMA_AREA_REGULAR == 0 {
                tag.push_str(" *");
            }
            let prot: String = [(1, 'r'), (2, 'w'), (4, 'x')]
                .iter()
                .map(|&(bit, c)| if vma.prot & bit != 0 { c } else { '-' })
                .collect();
            let range = format!("{:08x}-{:08x}", vma.start, vma.end);
            let _ = writeln!(out, "\t{range:<36}{prot}{tag}");
        }
    }
    Ok(out)
}

fn rss(set: &Set) -> Result<String> {
    let set = &set.with_files()?;

    let mut out = String::new();
    for p in &set.tree {
        let mm: MmEntry = set.one(&format!("mm-{}.img", p.pid))?;
        let pagemap_path = set.dir.join(format!("pagemap-{}.img", p.pid));
        let pagemap = read_entries::<PagemapEntry>(&pagemap_path, 1)?;
        let vmas = &mm.vmas;

        let _ = writeln!(out, "{}", p.pid);
        let mut vmi = 0usize;
        let mut shown: Option<usize> = None;
        for pm in &pagemap {
            let nr_pages = pm.nr_pages.unwrap_or(u64::from(pm.compat_nr_pages));
            let head = format!("\t{:x} / {:<8}", pm.vaddr, nr_pages);
            while vmi < vmas.len() && vmas[vmi].end <= pm.vaddr {
                vmi += 1;
            }
            let pm_end = pm.vaddr.saturating_add(nr_pages << 12);
            let mut tail = String::new();
            while vmi < vmas.len() && vmas[vmi].start < pm_end {
                let vma = &vmas[vmi];
                if shown == Some(vmi) {
                    tail.push_str(" ~");
                } else {
                    let _ = write!(
                        tail,
                        " {:08x} / {:<8}",
                        vma.start,
                        (vma.end - vma.start) >> 12
                    );
                    if vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                        let _ = write!(tail, " {}", set.file_str("REG", vma.shmid as u32));
                    }
                    shown = Some(vmi);
                }
                let _ = write!(tail, "\n\t{:23}", "");
                vmi += 1;
            }
            vmi = vmi.saturating_sub(1);
            let _ = writeln!(out, "{head:<24}{tail}");
        }
    }
    Ok(out)
}
