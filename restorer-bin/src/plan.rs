//! The restore plan: everything read from an image directory, checked, and arranged in
//! the order the restorer acts on it — before a single process is created.
//!
//! Planning is plain code over decoded images. It resolves the cross-references
//! (fdinfo → files.img, VMA → mapped file, fs → cwd), orders the tree so that
//! parents come before their children, and refuses what cryo cannot restore
//! (zombies, 32-bit tasks, socket fds...) with an error naming the task and the
//! resource. [`RestorePlan::check_ids_free`] is the last check before anything changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use cryo_format::ImageSet;
use cryo_format::schema::{CoreEntry, FdTypes, FileEntry, MmEntry, PstreeEntry, SaEntry, VmaEntry};

use crate::anonfd::AnonFile;

pub use cryo_format::vma::status as vma_status;

/// CRIU's task states.
const TASK_ALIVE: u32 = 1;
/// `task_state` of a zombie (CRIU's TASK_DEAD).
const TASK_DEAD: u32 = 2;
/// `task_state` of a task in a job-control stop (CRIU's TASK_STOPPED).
const TASK_STOPPED: u32 = 3;

/// Errors building a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the image set")]
    Images(#[from] cryo_format::ImageSetError),
    #[error("{image}: no tasks in the process tree")]
    EmptyTree { image: PathBuf },
    #[error("{image}, entry {index}: task {pid} has no threads listed")]
    NoThreads {
        image: PathBuf,
        index: usize,
        pid: i32,
    },
    #[error("{image}, entry {index}: task {pid} appears twice in the tree")]
    DuplicateTask {
        image: PathBuf,
        index: usize,
        pid: i32,
    },
    #[error("{image}, entry {index}: parent {ppid} of task {pid} is not dumped before it")]
    UnknownParent {
        image: PathBuf,
        index: usize,
        pid: i32,
        ppid: i32,
    },
    #[error("{image}: field {field} is missing")]
    MissingField { image: PathBuf, field: &'static str },
    #[error("task {pid}: {what} is not supported by cryo's restorer")]
    Unsupported { pid: i32, what: String },
    #[error("task {pid}, fd {fd}: file id {id} is not in files.img")]
    UnknownFile { pid: i32, fd: u32, id: u32 },
    #[error("task {pid}, {field}: file id {id} is not a regular file in files.img")]
    NotRegular {
        pid: i32,
        field: &'static str,
        id: u32,
    },
    #[error("{image}, VMA {index} [{start:#x}, {end:#x}): {problem}")]
    BadVma {
        image: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        problem: &'static str,
    },
    #[error("task {pid}: mapped file {path}: {problem}")]
    MappedFile {
        pid: i32,
        path: PathBuf,
        problem: String,
    },
    #[error("task {pid}: epoll fd {epfd} watches fd {fd}, which the task does not have open")]
    EpollTarget { pid: i32, epfd: i32, fd: i32 },
    #[error("pid {pid} ({what}) is already in use on this system")]
    IdInUse { pid: i32, what: &'static str },
}

/// A file object of files.img that the restorer knows how to recreate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSpec {
    Regular {
        path: PathBuf,
        flags: u32,
        pos: u64,
        size: Option<u64>,
    },
    Pipe {
        pipe_id: u32,
        flags: u32,
    },
    Tty,
    /// An eventfd, timerfd, signalfd or epoll instance.
    Anon(AnonFile),
}

/// One descriptor of a task's fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    pub fd: i32,
    pub file_id: u32,
    pub cloexec: bool,
}

/// One registration that a process makes in an epoll instance once its fds are in
/// place: `EPOLL_CTL_ADD` of fd `target` to epoll fd `epfd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollRegistration {
    pub epfd: i32,
    pub target: i32,
    /// As dumped (with the implicit EPOLLERR|EPOLLHUP).
    pub events: u32,
    pub data: u64,
}

/// One thread: its id and its core image.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    pub tid: i32,
    pub core: CoreEntry,
}

/// One process of the tree.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Indices (into [`RestorePlan::processes`]) of the children, in image order.
    pub children: Vec<usize>,
    /// Leader first.
    pub threads: Vec<ThreadPlan>,
    pub mm: MmEntry,
    pub fds: Vec<FdPlan>,
    /// The registrations of the epoll instances this process makes (see
    /// [`plan_epoll_registrations`]).
    pub epoll: Vec<EpollRegistration>,
    pub cwd: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub umask: u32,
    pub exe: PathBuf,
    /// A zombie: the wait status its parent is to collect. It has no memory, files or
    /// registers; it is created in its session and group and exits at once.
    pub zombie: Option<i32>,
    /// Dumped in a job-control stop: it is stopped again (with `SIGSTOP`) before the
    /// restorer lets it go.
    pub stopped: bool,
}

impl ProcessPlan {
    /// The task-wide part of the leader's core (sigactions, rlimits, timers...).
    pub fn task_core(&self) -> &cryo_format::schema::TaskCoreEntry {
        self.threads[0]
            .core
            .tc
            .as_ref()
            .expect("plan checks that the leader's core has tc")
    }

    /// `(signal number, action)` for every signal with a recorded action.
    pub fn sigactions(&self) -> Vec<(i32, SaEntry)> {
        signal_numbers()
            .zip(self.task_core().sigactions.iter().copied())
            .collect()
    }
}

/// Signal numbers in the order CRIU stores sigactions: 1..=64 without SIGKILL and SIGSTOP.
pub fn signal_numbers() -> impl Iterator<Item = i32> {
    (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
}

/// Buffered pipe contents from pipes-data.img.
#[derive(Debug, Clone, Default)]
pub struct PipeData {
    pub bytes: Vec<u8>,
    pub size: Option<u32>,
}

/// The whole restore, decided.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// Parents before children; index 0 is the root.
    pub processes: Vec<ProcessPlan>,
    pub files: BTreeMap<u32, FileSpec>,
    pub pipe_data: HashMap<u32, PipeData>,
}

impl RestorePlan {
    /// Reads and checks the image set in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PlanError> {
        let set = ImageSet::open(dir)?;
        let pstree_path = set.path("pstree.img");
        let pstree = set.pstree()?;
        let files = decode_files(&set.files()?);
        let pipe_data = set
            .pipes_data()?
            .into_iter()
            .map(|(entry, bytes)| {
                let data = PipeData {
                    bytes,
                    size: entry.size,
                };
                (entry.pipe_id, data)
            })
            .collect();

        let mut processes: Vec<ProcessPlan> = Vec::new();
        let mut index_of: HashMap<i32, usize> = HashMap::new();
        for (index, entry) in pstree.iter().enumerate() {
            let pid = entry.pid as i32;
            if entry.threads.is_empty() {
                return Err(PlanError::NoThreads {
                    image: pstree_path,
                    index,
                    pid,
                });
            }
            if index_of.contains_key(&pid) {
                return Err(PlanError::DuplicateTask {
                    image: pstree_path,
                    index,
                    pid,
                });
            }
            let ppid = entry.ppid as i32;
            let parent = if index == 0 {
                None
            } else {
                match index_of.get(&ppid) {
                    Some(&p) => Some(p),
                    None => {
                        return Err(PlanError::UnknownParent {
                            image: pstree_path,
                            index,
                            pid,
                            ppid,
                        });
                    }
                }
            };
            let process = load_process(&set, entry, &files)?;
            let dead_parent = parent.filter(|&p| processes[p].zombie.is_some());
            if process.zombie.is_some() && index == 0 || dead_parent.is_some() {
                return Err(PlanError::Unsupported {
                    pid,
                    what: match dead_parent {
                        Some(p) => format!("a child of the zombie {}", processes[p].pid),
                        None => "a zombie as the root of the tree".into(),
                    },
                });
            }
            index_of.insert(pid, processes.len());
            if let Some(p) = parent {
                let next = processes.len();
                processes[p].children.push(next);
            }
            processes.push(process);
        }
        if processes.is_empty() {
            return Err(PlanError::EmptyTree { image: pstree_path });
        }
        plan_epoll_registrations(&mut processes, &files)?;
        Ok(RestorePlan {
            processes,
            files,
            pipe_data,
        })
    }

    /// Every pid and tid of the plan, with what it is.
    pub fn ids(&self) -> impl Iterator<Item = (i32, &'static str)> + '_ {
        self.processes.iter().flat_map(|p| {
            p.threads
                .iter()
                .map(move |t| (t.tid, if t.tid == p.pid { "process" } else { "thread" }))
        })
    }

    /// Fails with the first pid or tid that exists on the system now. A zombie
    /// orphan (a task of the dumped tree, killed by the dump and handed to init, which
    /// may take seconds to reap it) is waited for, up to `orphan_wait`.
    pub fn check_ids_free(&self, orphan_wait: std::time::Duration) -> Result<(), PlanError> {
        let deadline = std::time::Instant::now() + orphan_wait;
        for (pid, what) in self.ids() {
            loop {
                let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    Ok(stat) => stat,
                    Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => break,
                    Err(_) => return Err(PlanError::IdInUse { pid, what }),
                };
                if !is_reapable_orphan(&stat) || std::time::Instant::now() >= deadline {
                    return Err(PlanError::IdInUse { pid, what });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Checks that every mapped file and exe exists, with its dumped size when the
    /// image recorded one.
    pub fn check_mapped_files(&self) -> Result<(), PlanError> {
        for p in &self.processes {
            let file_ids = p
                .mm
                .vmas
                .iter()
                .filter(|v| v.status & (vma_status::FILE_PRIVATE | vma_status::FILE_SHARED) != 0)
                .map(|v| v.shmid as u32)
                .chain(std::iter::once(p.mm.exe_file_id));
            for id in file_ids {
                let Some(FileSpec::Regular { path, size, .. }) = self.files.get(&id) else {
                    continue;
                };
                let problem = |problem: String| PlanError::MappedFile {
                    pid: p.pid,
                    path: path.clone(),
                    problem,
                };
                let meta = std::fs::metadata(path).map_err(|e| problem(e.to_string()))?;
                if !meta.is_file() {
                    return Err(problem("not a regular file".into()));
                }
                if let Some(size) = size
                    && meta.len() != *size
                {
                    return Err(problem(format!(
                        "{} bytes now, {size} at the dump",
                        meta.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Fails if a thread ran with other credentials than the restorer's: cryo does
    /// not switch credentials yet, and restoring a task with more privilege than it
    /// had must not happen silently.
    pub fn check_credentials(&self) -> Result<(), PlanError> {
        let (mut r, mut e, mut s) = (0, 0, 0);
        let (mut gr, mut ge, mut gs) = (0, 0, 0);
        // SAFETY: getresuid/getresgid write three ids each into our locals.
        unsafe {
            libc::getresuid(&mut r, &mut e, &mut s);
            libc::getresgid(&mut gr, &mut ge, &mut gs);
        }
        for p in &self.processes {
            for t in &p.threads {
                let Some(c) = t.core.thread_core.as_ref().and_then(|c| c.creds.as_ref()) else {
                    continue;
                };
                let dumped = [c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid];
                if dumped != [r, e, s, gr, ge, gs] {
                    return Err(PlanError::Unsupported {
                        pid: p.pid,
                        what: format!(
                            "thread {} with uid {}/{}/{} gid {}/{}/{} (the restorer runs as \
                             uid {r}/{e}/{s} gid {gr}/{ge}/{gs}; switching credentials)",
                            t.tid, c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Highest descriptor number any task uses.
    pub fn max_fd(&self) -> i32 {
        self.processes
            .iter()
            .flat_map(|p| p.fds.iter().map(|f| f.fd))
            .max()
            .unwrap_or(2)
    }
}

/// Whether a `/proc/PID/stat` line is a zombie whose parent is init: nobody but init
/// holds it, and init reaps it eventually.
fn is_reapable_orphan(stat: &str) -> bool {
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut rest = stat[close + 1..].split_whitespace();
    matches!(
        (rest.next(), rest.next()),
        (Some("Z") | Some("X"), Some("1"))
    )
}

fn decode_files(entries: &[FileEntry]) -> BTreeMap<u32, FileSpec> {
    let mut out = BTreeMap::new();
    for entry in entries {
        let spec = if let Some(reg) = &entry.reg {
            FileSpec::Regular {
                path: PathBuf::from(&reg.name),
                flags: reg.flags,
                pos: reg.pos,
                size: reg.size,
            }
        } else if let Some(pipe) = &entry.pipe {
            FileSpec::Pipe {
                pipe_id: pipe.pipe_id,
                flags: pipe.flags,
            }
        } else if entry.tty.is_some() {
            FileSpec::Tty
        } else if let Some(anon) = AnonFile::decode(entry) {
            FileSpec::Anon(anon)
        } else {
            continue;
        };
        out.insert(entry.id, spec);
    }
    out
}

fn load_process(
    set: &ImageSet,
    entry: &PstreeEntry,
    files: &BTreeMap<u32, FileSpec>,
) -> Result<ProcessPlan, PlanError> {
    let pid = entry.pid as i32;
    let unsupported = |what: String| PlanError::Unsupported { pid, what };

    let leader = set.core(entry.pid)?;
    if let Some(tc) = &leader.tc
        && tc.task_state == TASK_DEAD
    {
        return Ok(ProcessPlan {
            pid,
            ppid: entry.ppid as i32,
            pgid: entry.pgid as i32,
            sid: entry.sid as i32,
            children: Vec::new(),
            threads: vec![ThreadPlan {
                tid: pid,
                core: leader.clone(),
            }],
            mm: MmEntry::default(),
            fds: Vec::new(),
            epoll: Vec::new(),
            cwd: None,
            root: None,
            umask: 0o022,
            exe: PathBuf::new(),
            zombie: Some(tc.exit_code as i32),
            stopped: false,
        });
    }

    let mut threads = Vec::new();
    for &tid in &entry.threads {
        let core = set.core(tid)?;
        let Some(info) = &core.thread_info else {
            return Err(unsupported(format!(
                "thread {tid} without x86-64 registers"
            )));
        };
        if info.gpregs.mode == Some(2) {
            return Err(unsupported(format!("32-bit (compat) thread {tid}")));
        }
        threads.push(ThreadPlan {
            tid: tid as i32,
            core,
        });
    }
    let core_path = set.path(&format!("core-{pid}.img"));
    let Some(tc) = &threads[0].core.tc else {
        return Err(PlanError::MissingField {
            image: core_path,
            field: "tc",
        });
    };
    let stopped = tc.task_state == TASK_STOPPED;
    if tc.task_state != TASK_ALIVE && !stopped {
        return Err(unsupported(format!("task state {}", tc.task_state)));
    }
    if tc.timers.as_ref().is_some_and(|t| !t.posix.is_empty()) {
        return Err(unsupported("POSIX timers".into()));
    }

    let ids = set.ids(entry.pid)?;
    let mm = set.mm(entry.pid)?;
    check_vmas(&set.path(&format!("mm-{pid}.img")), &mm.vmas, files, pid)?;
    let fs = set.fs(entry.pid)?;
    let fdinfo = set.fdinfo(ids.files_id)?;

    let mut fds = Vec::new();
    for fdi in &fdinfo {
        let Some(spec) = files.get(&fdi.id) else {
            let ty = FdTypes::try_from(fdi.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| fdi.r#type.to_string());
            return Err(match files_has_type(fdi.r#type) {
                true => unsupported(format!("fd {} of type {ty}", fdi.fd)),
                false => PlanError::UnknownFile {
                    pid,
                    fd: fdi.fd,
                    id: fdi.id,
                },
            });
        };
        let _ = spec;
        fds.push(FdPlan {
            fd: fdi.fd as i32,
            file_id: fdi.id,
            cloexec: fdi.flags & libc::FD_CLOEXEC as u32 != 0,
        });
    }

    let regular_path = |id: u32, field: &'static str| match files.get(&id) {
        Some(FileSpec::Regular { path, .. }) => Ok(path.clone()),
        _ => Err(PlanError::NotRegular { pid, field, id }),
    };
    let cwd = Some(regular_path(fs.cwd_id, "fs.cwd_id")?);
    let root = regular_path(fs.root_id, "fs.root_id")?;
    let root = (root != Path::new("/")).then_some(root);
    let exe = regular_path(mm.exe_file_id, "mm.exe_file_id")?;

    Ok(ProcessPlan {
        pid,
        ppid: entry.ppid as i32,
        pgid: entry.pgid as i32,
        sid: entry.sid as i32,
        children: Vec::new(),
        threads,
        mm,
        fds,
        epoll: Vec::new(),
        cwd,
        root,
        umask: fs.umask.unwrap_or(0o022),
        exe,
        zombie: None,
        stopped,
    })
}

/// fd types whose file entries we decode; anything else is "unsupported", not "unknown".
fn files_has_type(ty: i32) -> bool {
    let decoded = [
        FdTypes::Reg,
        FdTypes::Pipe,
        FdTypes::Tty,
        FdTypes::Eventfd,
        FdTypes::Timerfd,
        FdTypes::Signalfd,
        FdTypes::Eventpoll,
    ];
    !decoded.iter().any(|&t| t as i32 == ty)
}

/// Gives the registrations of every epoll instance to the first process, in tree
/// order, that has it open: the fd numbers of the image are that process's. Each
/// watched fd must be open in it.
fn plan_epoll_registrations(
    processes: &mut [ProcessPlan],
    files: &BTreeMap<u32, FileSpec>,
) -> Result<(), PlanError> {
    let mut assigned = HashSet::new();
    for p in processes.iter_mut() {
        let mut registrations = Vec::new();
        for f in &p.fds {
            let Some(FileSpec::Anon(AnonFile::Eventpoll { targets, .. })) = files.get(&f.file_id)
            else {
                continue;
            };
            if !assigned.insert(f.file_id) {
                continue;
            }
            for t in targets {
                if !p.fds.iter().any(|g| g.fd == t.fd) {
                    return Err(PlanError::EpollTarget {
                        pid: p.pid,
                        epfd: f.fd,
                        fd: t.fd,
                    });
                }
                registrations.push(EpollRegistration {
                    epfd: f.fd,
                    target: t.fd,
                    events: t.events,
                    data: t.data,
                });
            }
        }
        p.epoll = registrations;
    }
    Ok(())
}

fn check_vmas(
    image: &Path,
    vmas: &[VmaEntry],
    files: &BTreeMap<u32, FileSpec>,
    pid: i32,
) -> Result<(), PlanError> {
    use vma_status::*;
    let page = 4096;
    let mut prev_end = 0;
    let mut file_ids = HashSet::new();
    for (index, vma) in vmas.iter().enumerate() {
        let bad = |problem| PlanError::BadVma {
            image: image.to_path_buf(),
            index,
            start: vma.start,
            end: vma.end,
            problem,
        };
        if vma.start % page != 0 || vma.end % page != 0 || vma.end <= vma.start {
            return Err(bad("not a page-aligned, non-empty range"));
        }
        if vma.start < prev_end {
            return Err(bad("overlaps or precedes the previous VMA"));
        }
        prev_end = vma.end;
        let unsupported = SYSVIPC | SOCKET | AIORING | MEMFD | SHSTK | UNSUPP;
        if vma.status & unsupported != 0 {
            return Err(PlanError::Unsupported {
                pid,
                what: format!(
                    "VMA [{:#x}, {:#x}) with status {:#x}",
                    vma.start, vma.end, vma.status
                ),
            });
        }
        if vma.status & (FILE_PRIVATE | FILE_SHARED) != 0 {
            let id = u32::try_from(vma.shmid).map_err(|_| bad("file id out of range"))?;
            if !matches!(files.get(&id), Some(FileSpec::Regular { .. })) {
                return Err(bad("mapped file is not a regular file in files.img"));
            }
            file_ids.insert(id);
        }
    }
    Ok(())
}

/// Whether a VMA's pages are restored from the pages image.
pub fn vma_takes_pages(vma: &VmaEntry) -> bool {
    use vma_status::*;
    vma.status & (VDSO | VVAR | VSYSCALL | FILE_SHARED | ANON_SHARED) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/criu-images")
            .join(name)
    }

    #[test]
    fn signal_order_skips_kill_and_stop() {
        let sigs: Vec<i32> = signal_numbers().collect();
        assert_eq!(sigs.len(), 62);
        assert_eq!(sigs[8], 10);
        assert_eq!(sigs[30], 33);
    }

    #[test]
    fn plans_criu_counter_set() {
        let plan = RestorePlan::load(&fixture("counter")).unwrap();
        assert_eq!(plan.processes.len(), 1);
        let p = &plan.processes[0];
        assert_eq!((p.pid, p.pgid, p.sid), (13131, 13131, 13131));
        assert_eq!(p.exe, Path::new("/tmp/fx/mem"));
        assert_eq!(p.cwd.as_deref(), Some(Path::new("/tmp/fx")));
        assert_eq!(p.root, None);
        let fd3 = p.fds.iter().find(|f| f.fd == 3).unwrap();
        assert_eq!(
            plan.files[&fd3.file_id],
            FileSpec::Regular {
                path: "/tmp/fx/counter.log".into(),
                flags: (libc::O_WRONLY | libc::O_APPEND) as u32 | 0o100000, // kernel O_LARGEFILE
                pos: 78,
                size: None
            }
        );
        assert_eq!(plan.max_fd(), 251);
        assert_eq!(p.mm.vmas.len(), 24);
    }

    #[test]
    fn plans_criu_pipe_tree_with_children_in_order() {
        let plan = RestorePlan::load(&fixture("pipe-tree")).unwrap();
        let pids: Vec<i32> = plan.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [13236, 13238, 13239]);
        assert_eq!(plan.processes[0].children, [1, 2]);
        let readers: Vec<_> = plan
            .files
            .values()
            .filter(|f| matches!(f, FileSpec::Pipe { flags: 0, .. }))
            .collect();
        assert!(!readers.is_empty());
        assert!(plan.pipe_data.values().all(|d| d.bytes.is_empty()));
    }

    #[test]
    fn plans_threads_leader_first() {
        let plan = RestorePlan::load(&fixture("threads4")).unwrap();
        let tids: Vec<i32> = plan.processes[0].threads.iter().map(|t| t.tid).collect();
        assert_eq!(tids, [13178, 13180, 13181, 13182, 13183]);
        assert_eq!(plan.ids().filter(|(_, w)| *w == "thread").count(), 4);
    }

    #[test]
    fn pid_in_use_is_named() {
        let mut plan = RestorePlan::load(&fixture("counter")).unwrap();
        let own = std::process::id() as i32;
        plan.processes[0].threads[0].tid = own;
        // A live process is not waited for, however long the wait allowed.
        let started = std::time::Instant::now();
        let err = plan
            .check_ids_free(std::time::Duration::from_secs(30))
            .unwrap_err();
        assert!(matches!(err, PlanError::IdInUse { pid, .. } if pid == own));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn only_zombie_orphans_count_as_about_to_be_free() {
        assert!(is_reapable_orphan("42 (a) b) Z 1 42 42 0"));
        assert!(
            !is_reapable_orphan("42 (a) Z 7 42 42 0"),
            "its parent may keep it"
        );
        assert!(!is_reapable_orphan("42 (a) S 1 42 42 0"), "alive");
        assert!(!is_reapable_orphan("garbage"));
    }

    #[test]
    fn missing_mapped_file_is_named() {
        let mut plan = RestorePlan::load(&fixture("counter")).unwrap();
        let exe = plan.processes[0].mm.exe_file_id;
        let Some(FileSpec::Regular { path, .. }) = plan.files.get_mut(&exe) else {
            panic!("exe is a regular file");
        };
        *path = "/nonexistent/cryo-exe".into();
        let err = plan.check_mapped_files().unwrap_err();
        assert!(
            matches!(&err, PlanError::MappedFile { pid: 13131, path, .. } if path == Path::new("/nonexistent/cryo-exe"))
        );
    }

    #[test]
    fn foreign_credentials_are_refused() {
        let mut plan = RestorePlan::load(&fixture("counter")).unwrap();
        assert!(
            plan.check_credentials().is_ok(),
            "the fixtures ran as root, like the tests"
        );
        let core = plan.processes[0].threads[0]
            .core
            .thread_core
            .as_mut()
            .unwrap();
        core.creds.as_mut().unwrap().euid = 1000;
        let err = plan.check_credentials().unwrap_err();
        assert!(
            matches!(err, PlanError::Unsupported { pid: 13131, .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = RestorePlan::load(Path::new("/nonexistent/cryo")).unwrap_err();
        assert!(matches!(err, PlanError::Images(_)));
    }

    /// The pipe tree with epoll file 900 at fd 40 of both children, watching `targets`.
    fn tree_with_epoll(targets: &[i32]) -> (Vec<ProcessPlan>, BTreeMap<u32, FileSpec>) {
        let plan = RestorePlan::load(&fixture("pipe-tree")).unwrap();
        let mut files = plan.files.clone();
        let targets = targets
            .iter()
            .map(|&fd| crate::anonfd::EpollTarget {
                fd,
                events: 25,
                data: fd as u64,
            })
            .collect();
        files.insert(
            900,
            FileSpec::Anon(AnonFile::Eventpoll { flags: 2, targets }),
        );
        let mut processes = plan.processes.clone();
        for p in &mut processes[1..] {
            p.fds.push(FdPlan {
                fd: 40,
                file_id: 900,
                cloexec: false,
            });
        }
        (processes, files)
    }

    #[test]
    fn epoll_registrations_go_to_the_first_process_with_the_instance() {
        let (mut processes, files) = tree_with_epoll(&[0, 1]);
        plan_epoll_registrations(&mut processes, &files).unwrap();
        assert!(processes[0].epoll.is_empty());
        let targets: Vec<(i32, i32, u64)> = processes[1]
            .epoll
            .iter()
            .map(|r| (r.epfd, r.target, r.data))
            .collect();
        assert_eq!(targets, [(40, 0, 0), (40, 1, 1)]);
        assert!(
            processes[2].epoll.is_empty(),
            "registered once, by the first"
        );
    }

    #[test]
    fn epoll_watching_a_closed_fd_is_refused_with_pid_and_fds() {
        let (mut processes, files) = tree_with_epoll(&[0, 77]);
        let err = plan_epoll_registrations(&mut processes, &files).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::EpollTarget {
                    pid: 13238,
                    epfd: 40,
                    fd: 77
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "task 13238: epoll fd 40 watches fd 77, which the task does not have open"
        );
    }

    #[test]
    fn anonymous_files_are_decoded_and_others_still_unsupported() {
        use cryo_format::schema::{EventfdFileEntry, FownEntry};
        let entry = FileEntry {
            r#type: FdTypes::Eventfd as i32,
            id: 6,
            efd: Some(EventfdFileEntry {
                id: 6,
                flags: 2050,
                fown: FownEntry::default(),
                counter: 5,
            }),
            ..Default::default()
        };
        let files = decode_files(&[entry]);
        assert_eq!(
            files[&6],
            FileSpec::Anon(AnonFile::Eventfd {
                flags: 2050,
                counter: 5
            })
        );
        assert!(!files_has_type(FdTypes::Eventpoll as i32));
        assert!(files_has_type(FdTypes::Inotify as i32));
    }

    #[test]
    fn overlapping_vmas_are_refused() {
        let plan = RestorePlan::load(&fixture("counter")).unwrap();
        let mut vmas = plan.processes[0].mm.vmas.clone();
        vmas[3].start = vmas[2].start;
        let err = check_vmas(Path::new("mm"), &vmas, &plan.files, 1).unwrap_err();
        assert!(matches!(err, PlanError::BadVma { index: 3, .. }));
    }
}
