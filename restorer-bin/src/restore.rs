//! The restore, start to end: plan, files, tree, memory, switch, detach.
//!
//! Everything that can be checked is checked before the first process exists (the
//! plan, free pids, the pages images, every file). From the moment the root is
//! created a [`TreeGuard`] holds the tree: if any later step fails, every process the
//! restore created is killed (tracees are also seized with `PTRACE_O_EXITKILL`, so
//! they die with the restorer even if it is killed itself). Processes are detached
//! only once all of them are complete, so no restored task runs beside a half-built
//! one.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cryo_format::{MemoryView, PagemapId};

use crate::files::{self, OpenFiles};
use crate::inject::{InjectError, Tracee};
use crate::memory;
use crate::netpages::PageServer;
use crate::pages::PageSource;
use crate::plan::{PlanError, RestorePlan};
use crate::spawn::{self, KernelSigaction, Pgid, SpawnNode, SpawnPlan};
use crate::thread;

/// How long the new tree may take to report ready.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("process {pid}: opening its dumped memory")]
    Pages {
        pid: i32,
        #[source]
        source: cryo_format::MemoryError,
    },
    #[error(transparent)]
    NetPages(Box<crate::netpages::NetPagesError>),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
    #[error("seizing {what} {tid}")]
    Seize {
        tid: i32,
        what: &'static str,
        #[source]
        source: InjectError,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Switch(#[from] thread::SwitchError),
    #[error("stopping process {pid} again (it was dumped stopped)")]
    Stop {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("releasing thread {tid}")]
    Detach {
        tid: i32,
        #[source]
        source: InjectError,
    },
    #[error(transparent)]
    Timens(#[from] crate::timens::TimensError),
    #[error("path {0} contains a NUL byte")]
    NulInPath(String),
}

impl From<crate::netpages::NetPagesError> for RestoreError {
    fn from(e: crate::netpages::NetPagesError) -> Self {
        RestoreError::NetPages(Box::new(e))
    }
}

/// What the caller asked for.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub shell_job: bool,
    /// Take private pages from this page server instead of the directory's pages images.
    pub page_server: Option<std::net::SocketAddr>,
    /// The server's checkpoint to read (default: the one `dir` records; required when it
    /// records none).
    pub checkpoint: Option<u64>,
}

/// The dumped pages of every process, from local images or from a page server.
enum Memory {
    /// `None` for a zombie.
    Images(Vec<Option<MemoryView>>),
    Fetched(Vec<crate::netpages::FetchedPages>),
}

impl Memory {
    fn source(&self, index: usize) -> PageSource<'_> {
        match self {
            Memory::Images(v) => {
                PageSource::Images(v[index].as_ref().expect("a live process has its pages"))
            }
            Memory::Fetched(v) => PageSource::Fetched(&v[index]),
        }
    }
}

/// A restored, running tree.
#[derive(Debug)]
pub struct Restored {
    pub root: i32,
    pub processes: usize,
    pub threads: usize,
    pub elapsed: Duration,
}

/// How long a pid held by a zombie orphan of the dumped tree (killed by the dump, not
/// reaped yet by init) may delay the restore.
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

/// Kills what a failed restore created.
struct TreeGuard {
    root: Option<i32>,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in self.pids.iter().rev() {
            // SAFETY: signalling a process this restore created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(root) = self.root {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(root, libc::SIGKILL);
                libc::waitpid(root, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
}

/// Restores the tree in `opts.dir` and leaves it running.
pub fn restore(opts: &Options<'_>) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let plan = RestorePlan::load(opts.dir)?;
    plan.check_ids_free(ORPHAN_WAIT)?;
    plan.check_mapped_files()?;
    plan.check_credentials()?;

    // Every page is at hand (mapped, or fetched) before the first process exists.
    let memory = match opts.page_server {
        None => Memory::Images(
            plan.processes
                .iter()
                .map(|p| {
                    if p.zombie.is_some() {
                        return Ok(None);
                    }
                    MemoryView::open(opts.dir, PagemapId::Pid(p.pid as u32))
                        .map(Some)
                        .map_err(|source| RestoreError::Pages { pid: p.pid, source })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(peer) => {
            let fetch_started = Instant::now();
            let mut server = PageServer::connect(peer, opts.dir, opts.checkpoint, &plan.processes)?;
            let fetched = server.fetch_all(opts.dir, &plan.processes)?;
            let checkpoint = server.checkpoint();
            server.close();
            tracing::info!(
                %peer,
                checkpoint,
                pages = fetched.iter().map(|f| f.pages()).sum::<u64>(),
                ms = fetch_started.elapsed().as_secs_f64() * 1e3,
                "pages fetched from the page server"
            );
            Memory::Fetched(fetched)
        }
    };

    let set = cryo_format::ImageSet::open(opts.dir).map_err(PlanError::from)?;
    crate::timens::enter(&set)?;

    let fd_base = fd_base(&plan);
    raise_nofile(fd_base);
    let open = files::open_all(&plan, fd_base, opts.shell_job)?;
    let spawn_plan = spawn_plan(&plan, &open, fd_base)?;

    let mut guard = TreeGuard {
        root: None,
        pids: Vec::new(),
        armed: true,
    };
    let spawned = spawn::spawn_tree(&spawn_plan, SPAWN_TIMEOUT, &mut guard.root)?;
    guard.pids = spawned.ready.clone();
    drop(open);
    tracing::info!(
        root = spawned.root,
        processes = spawned.ready.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "tree created"
    );

    // Zombies are not traced: they have exited already, or are about to.
    let mut tracees = Vec::new();
    for p in &plan.processes {
        let mut threads = Vec::new();
        for th in p.threads.iter().filter(|_| p.zombie.is_none()) {
            let what = if th.tid == p.pid { "process" } else { "thread" };
            let t = Tracee::seize(th.tid).map_err(|source| RestoreError::Seize {
                tid: th.tid,
                what,
                source,
            })?;
            threads.push(t);
        }
        tracees.push(threads);
    }

    for (index, (p, threads)) in plan.processes.iter().zip(&mut tracees).enumerate() {
        if p.zombie.is_some() {
            continue;
        }
        let scratch = memory::restore(&mut threads[0], p, &plan.files, memory.source(index))?;
        let blocked = p.task_core().blk_sigset;
        for (t, th) in threads.iter_mut().zip(&p.threads).skip(1) {
            t.gadget = scratch.addr;
            let mask = thread::prepare_thread(t, p.pid, th, blocked, scratch, false)?;
            thread::set_final_regs(t, th)?;
            t.set_sigmask(mask).map_err(|source| RestoreError::Detach {
                tid: th.tid,
                source,
            })?;
        }
        for th in &p.threads {
            thread::set_sched(th.tid, th)?;
        }
        let leader = &threads[0];
        let mask = thread::prepare_thread(leader, p.pid, &p.threads[0], blocked, scratch, true)?;
        thread::finish_process(leader, p, scratch, fd_base, mask)?;
        tracing::debug!(pid = p.pid, "process ready");
    }

    // A process dumped in a job-control stop stops again as soon as it is let go.
    for p in plan.processes.iter().filter(|p| p.stopped) {
        // SAFETY: kill(2) on a process this restore created; no memory effects.
        if unsafe { libc::kill(p.pid, libc::SIGSTOP) } < 0 {
            return Err(RestoreError::Stop {
                pid: p.pid,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    for t in tracees.iter().flatten() {
        t.detach()
            .map_err(|source| RestoreError::Detach { tid: t.tid, source })?;
    }
    guard.armed = false;
    Ok(Restored {
        root: spawned.root,
        processes: plan.processes.len(),
        threads: plan.processes.iter().map(|p| p.threads.len()).sum(),
        elapsed: started.elapsed(),
    })
}

/// First descriptor number above every dumped one (and above stdio).
fn fd_base(plan: &RestorePlan) -> i32 {
    let n = (plan.max_fd() + 1).max(64);
    (n + 63) / 64 * 64
}

/// Lets the restorer hold descriptors up to `fd_base` and beyond, within its hard limit.
fn raise_nofile(fd_base: i32) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0
            && lim.rlim_cur < fd_base as u64 + 1024
        {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn cstring(path: &Path) -> Result<CString, RestoreError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RestoreError::NulInPath(path.display().to_string()))
}

/// Arranges sessions, groups, fds and signal actions for `spawn`.
fn spawn_plan(
    plan: &RestorePlan,
    open: &OpenFiles,
    fd_base: i32,
) -> Result<SpawnPlan, RestoreError> {
    let mut nodes = Vec::new();
    for (index, p) in plan.processes.iter().enumerate() {
        let parent = (index > 0)
            .then(|| plan.processes.iter().find(|q| q.pid == p.ppid))
            .flatten();
        let setsid = p.sid == p.pid;
        let pgid = pgid_action(p.pid, p.pgid, setsid, parent.map(|q| q.pgid));
        if parent.is_none() && !setsid {
            tracing::warn!(
                pid = p.pid,
                sid = p.sid,
                "root joins the restorer's session"
            );
        }
        let fds = p
            .fds
            .iter()
            .map(|f| {
                let src = open.fd(f.file_id).expect("every used file is open");
                (src, f.fd, f.cloexec)
            })
            .collect();
        let epoll = p
            .epoll
            .iter()
            .map(|r| {
                let events = crate::anonfd::registration_events(r.events);
                (r.epfd, r.target, events, r.data)
            })
            .collect();
        let sigactions = p
            .sigactions()
            .into_iter()
            .filter(|(_, sa)| sa.compat_sigaction != Some(true))
            .map(|(sig, sa)| {
                let act = KernelSigaction {
                    handler: sa.sigaction,
                    flags: sa.flags,
                    restorer: sa.restorer,
                    mask: sa.mask,
                };
                (sig, act)
            })
            .collect();
        nodes.push(SpawnNode {
            pid: p.pid,
            setsid,
            pgid,
            children: p.children.clone(),
            threads: p.threads.iter().skip(1).map(|t| t.tid).collect(),
            fds,
            epoll,
            root: p.root.as_deref().map(cstring).transpose()?,
            cwd: p.cwd.as_deref().map(cstring).transpose()?,
            umask: p.umask,
            sigactions,
            exit_status: p.zombie,
        });
    }
    Ok(SpawnPlan { nodes, fd_base })
}

/// How a process reaches group `pgid`.
fn pgid_action(pid: i32, pgid: i32, setsid: bool, parent_pgid: Option<i32>) -> Pgid {
    if pgid == pid {
        if setsid { Pgid::Inherit } else { Pgid::Own }
    } else if parent_pgid.is_none_or(|g| g == pgid) || setsid {
        Pgid::Inherit
    } else {
        Pgid::Join(pgid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_leader_needs_no_setpgid() {
        assert_eq!(pgid_action(10, 10, true, None), Pgid::Inherit);
    }

    #[test]
    fn group_leader_in_parent_session_makes_its_group() {
        assert_eq!(pgid_action(11, 11, false, Some(10)), Pgid::Own);
    }

    #[test]
    fn child_in_parent_group_inherits_and_other_group_joins() {
        assert_eq!(pgid_action(12, 10, false, Some(10)), Pgid::Inherit);
        assert_eq!(pgid_action(13, 11, false, Some(10)), Pgid::Join(11));
    }

    #[test]
    fn fd_base_clears_dumped_descriptors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images/counter");
        let plan = RestorePlan::load(&dir).unwrap();
        assert_eq!(fd_base(&plan), 256);
    }
}
