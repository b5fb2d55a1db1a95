//! Building a `Snapshot` from an image directory, through `cryo_format::ImageSet`.
//!
//! Loading happens in two steps because the snapshot borrows page bytes: `LoadedSet::open`
//! opens the set and one `MemoryView` per process (each maps its pages images and follows the
//! `parent` chain), then `LoadedSet::snapshot` reads the small images (pstree, cores, ids,
//! fdinfo, files, mm) and resolves every pagemap run to borrowed bytes. A missing optional
//! image (no fdinfo for a process without files) is empty, as CRIU treats it; anything
//! malformed is an error naming the image. A pre-dump directory (inventory, pagemaps and
//! pages only, no `pstree.img`) loads as memory only, so pre-dump rounds can be diffed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use cryo_format::schema::{
    CoreEntry, FdTypes, FdinfoEntry, FileEntry, MmEntry, PstreeEntry, UserX86RegsEntry,
};
use cryo_format::{ImageSet, ImageSetError, MemoryError, MemoryView, Source};

use crate::analyse::memory::{Origin, PAGE_SIZE, ProcessMemory, ResidentRun};
use crate::analyse::snapshot::{FdView, Registers, SigAction, Snapshot, TaskState, TaskView};
use crate::analyse::vma::{Vma, VmaKind, status};

/// Errors of loading an image set.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Set(#[from] ImageSetError),
    #[error("memory of process {pid}")]
    Memory {
        pid: u32,
        #[source]
        source: MemoryError,
    },
    #[error("{dir}: no process (pstree.img is empty, or a pre-dump has no pagemap-PID.img)")]
    EmptyTree { dir: std::path::PathBuf },
}

/// File ids of `files.img`, described for people.
pub type FileTable = HashMap<u32, FileView>;

/// What `files.img` says about one file id.
#[derive(Debug, Clone)]
pub struct FileView {
    pub desc: String,
    pub pos: Option<u64>,
    pub open_flags: Option<u32>,
    pub path: Option<String>,
}

/// An open image set with the memory views of all its processes.
#[derive(Debug)]
pub struct LoadedSet {
    pub set: ImageSet,
    pub tree: Vec<PstreeEntry>,
    pub views: BTreeMap<u32, MemoryView>,
    /// A pre-dump: only inventory, pagemaps and pages; processes come from the pagemaps'
    /// names and have no VMAs, registers or files.
    pub memory_only: bool,
}

impl LoadedSet {
    /// Opens `dir`: its inventory, pstree, and every process's memory view.
    pub fn open(dir: &Path) -> Result<LoadedSet, LoadError> {
        let set = ImageSet::open(dir)?;
        let memory_only = !set.path("pstree.img").exists();
        let tree = if memory_only {
            pagemap_pids(dir)
                .into_iter()
                .map(|pid| PstreeEntry {
                    pid,
                    threads: vec![pid],
                    ..PstreeEntry::default()
                })
                .collect()
        } else {
            set.pstree()?
        };
        if tree.is_empty() {
            return Err(LoadError::EmptyTree {
                dir: dir.to_path_buf(),
            });
        }
        let mut views = BTreeMap::new();
        for entry in &tree {
            let view = set.memory(entry.pid)?;
            views.insert(entry.pid, view);
        }
        tracing::debug!(
            dir = %dir.display(),
            processes = tree.len(),
            memory_only,
            "image set opened"
        );
        Ok(LoadedSet {
            set,
            tree,
            views,
            memory_only,
        })
    }

    /// Reads everything else and resolves the memory of every process.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, LoadError> {
        if self.memory_only {
            return self.memory_snapshot();
        }
        let files = describe_files(&self.set.files()?);
        let mut tasks = BTreeMap::new();
        for entry in &self.tree {
            tasks.insert(entry.pid, self.task(entry, &files)?);
        }
        Ok(Snapshot {
            dir: self.set.dir().to_path_buf(),
            tasks,
        })
    }

    /// A pre-dump's snapshot: memory only.
    fn memory_snapshot(&self) -> Result<Snapshot<'_>, LoadError> {
        let mut tasks = BTreeMap::new();
        for (&pid, view) in &self.views {
            let runs = resident_runs(view).map_err(|source| LoadError::Memory { pid, source })?;
            let task = TaskView {
                pid,
                comm: String::new(),
                threads: Vec::new(),
                registers: BTreeMap::new(),
                sigactions: Vec::new(),
                state: TaskState::new(),
                fds: BTreeMap::new(),
                memory: ProcessMemory {
                    pid,
                    vmas: Vec::new(),
                    runs,
                    arg: 0..0,
                    env: 0..0,
                },
            };
            tasks.insert(pid, task);
        }
        Ok(Snapshot {
            dir: self.set.dir().to_path_buf(),
            tasks,
        })
    }

    fn task(&self, entry: &PstreeEntry, files: &FileTable) -> Result<TaskView<'_>, LoadError> {
        let set = &self.set;
        let pid = entry.pid;

        let mut registers = BTreeMap::new();
        let mut comm = String::new();
        let mut sigactions = Vec::new();
        let mut state = TaskState::new();
        for &tid in &entry.threads {
            let core = set.core(tid)?;
            if let Some(info) = &core.thread_info {
                registers.insert(tid, named_registers(&info.gpregs));
            }
            if tid == pid {
                state = task_state(&core);
            }
            if let Some(tc) = core.tc.as_ref().filter(|_| tid == pid) {
                comm = tc.comm.clone();
                sigactions = tc
                    .sigactions
                    .iter()
                    .map(|sa| SigAction {
                        handler: sa.sigaction,
                        flags: sa.flags,
                        restorer: sa.restorer,
                        mask: sa.mask,
                    })
                    .collect();
            }
        }

        let ids = set.ids(pid)?;
        let fds = set
            .fdinfo(ids.files_id)?
            .iter()
            .map(|fd| (fd.fd, fd_view(fd, files)))
            .collect();

        let mm = set.mm(pid)?;
        let view = &self.views[&pid];
        let memory = ProcessMemory {
            pid,
            vmas: vmas(&mm, files),
            runs: resident_runs(view).map_err(|source| LoadError::Memory { pid, source })?,
            arg: mm.mm_arg_start..mm.mm_arg_end,
            env: mm.mm_env_start..mm.mm_env_end,
        };

        Ok(TaskView {
            pid,
            comm,
            threads: entry.threads.clone(),
            registers,
            sigactions,
            state,
            fds,
            memory,
        })
    }
}

/// Pids of the `pagemap-PID.img` files of `dir`, sorted.
fn pagemap_pids(dir: &Path) -> Vec<u32> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = listing
        .flatten()
        .filter_map(|item| {
            let name = item.file_name().into_string().ok()?;
            name.strip_prefix("pagemap-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Every dumped run of `view`, parents resolved, as borrowed bytes.
fn resident_runs(view: &MemoryView) -> Result<Vec<ResidentRun<'_>>, MemoryError> {
    let runs = view
        .resolved_runs()?
        .into_iter()
        .filter_map(|segment| {
            let (bytes, origin) = match segment.source {
                Source::Data { bytes, depth: 0 } => (Some(bytes), Origin::Pages),
                Source::Data { bytes, depth } => (
                    Some(bytes),
                    Origin::Parent {
                        depth: depth as u32,
                    },
                ),
                Source::Lazy => (None, Origin::Lazy),
                Source::Absent => return None,
            };
            Some(ResidentRun {
                vaddr: segment.vaddr,
                nr_pages: segment.len / PAGE_SIZE as u64,
                bytes,
                origin,
            })
        })
        .collect();
    Ok(runs)
}

/// Describes every `files.img` entry.
pub fn describe_files(entries: &[FileEntry]) -> FileTable {
    entries
        .iter()
        .map(|entry| (entry.id, describe_file(entry)))
        .collect()
}

fn describe_file(entry: &FileEntry) -> FileView {
    if let Some(reg) = &entry.reg {
        return FileView {
            desc: reg.name.clone(),
            pos: Some(reg.pos),
            open_flags: Some(reg.flags),
            path: Some(reg.name.clone()),
        };
    }
    let desc = if let Some(pipe) = &entry.pipe {
        format!("pipe[{}]", pipe.pipe_id)
    } else {
        let kind = FdTypes::try_from(entry.r#type)
            .map(|kind| kind.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("TYPE{}", entry.r#type));
        format!("{kind}.{}", entry.id)
    };
    FileView {
        desc,
        pos: None,
        open_flags: None,
        path: None,
    }
}

fn fd_view(fd: &FdinfoEntry, files: &FileTable) -> FdView {
    match files.get(&fd.id) {
        Some(file) => FdView {
            desc: file.desc.clone(),
            pos: file.pos,
            open_flags: file.open_flags,
        },
        None => FdView {
            desc: format!("missing file id {}", fd.id),
            pos: None,
            open_flags: None,
        },
    }
}

/// The VMAs of `mm`, sorted by start, with file names from `files`.
pub fn vmas(mm: &MmEntry, files: &FileTable) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = mm
        .vmas
        .iter()
        .map(|vma| {
            let file_backed = vma.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0;
            let path = u32::try_from(vma.shmid)
                .ok()
                .filter(|_| file_backed)
                .and_then(|id| files.get(&id))
                .and_then(|file| file.path.clone());
            Vma {
                start: vma.start,
                end: vma.end,
                prot: vma.prot,
                flags: vma.flags,
                status: vma.status,
                kind: VmaKind::classify(vma.status, vma.flags),
                path,
            }
        })
        .collect();
    vmas.sort_by_key(|vma| vma.start);
    vmas
}

/// `RLIMIT_*` names in resource-number order (the index of `task_rlimits_entry.rlimits`).
const RLIMITS: [&str; 16] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

/// The leader's task-wide state by name, from its core image.
fn task_state(core: &CoreEntry) -> TaskState {
    let mut state = TaskState::new();
    if let Some(tc) = &core.tc {
        state.push(("task_state".to_owned(), u64::from(tc.task_state)));
        state.push(("exit_code".to_owned(), u64::from(tc.exit_code)));
        state.push(("personality".to_owned(), u64::from(tc.personality)));
        state.push(("blk_sigset".to_owned(), tc.blk_sigset));
        for (index, limit) in tc.rlimits.iter().flat_map(|r| r.rlimits.iter()).enumerate() {
            let name = RLIMITS
                .get(index)
                .map_or_else(|| index.to_string(), |n| n.to_string());
            state.push((format!("rlimit_{name}.cur"), limit.cur));
            state.push((format!("rlimit_{name}.max"), limit.max));
        }
    }
    if let Some(creds) = core.thread_core.as_ref().and_then(|tc| tc.creds.as_ref()) {
        for (name, id) in [
            ("uid", creds.uid),
            ("gid", creds.gid),
            ("euid", creds.euid),
            ("egid", creds.egid),
            ("suid", creds.suid),
            ("sgid", creds.sgid),
            ("fsuid", creds.fsuid),
            ("fsgid", creds.fsgid),
        ] {
            state.push((format!("creds.{name}"), u64::from(id)));
        }
    }
    state
}

/// General-purpose registers by name, in `user_regs_struct` order.
pub fn named_registers(regs: &UserX86RegsEntry) -> Registers {
    vec![
        ("r15", regs.r15),
        ("r14", regs.r14),
        ("r13", regs.r13),
        ("r12", regs.r12),
        ("bp", regs.bp),
        ("bx", regs.bx),
        ("r11", regs.r11),
        ("r10", regs.r10),
        ("r9", regs.r9),
        ("r8", regs.r8),
        ("ax", regs.ax),
        ("cx", regs.cx),
        ("dx", regs.dx),
        ("si", regs.si),
        ("di", regs.di),
        ("orig_ax", regs.orig_ax),
        ("ip", regs.ip),
        ("cs", regs.cs),
        ("flags", regs.flags),
        ("sp", regs.sp),
        ("ss", regs.ss),
        ("fs_base", regs.fs_base),
        ("gs_base", regs.gs_base),
        ("ds", regs.ds),
        ("es", regs.es),
        ("fs", regs.fs),
        ("gs", regs.gs),
    ]
}
