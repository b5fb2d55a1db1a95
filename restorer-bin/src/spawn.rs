//! Creating the process tree with its original pids, sessions and groups.
//!
//! The restorer forks the root with `clone3` and `set_tid`; every new process runs
//! [`child_main`] — still the restorer's code, in a copy of its address space — which
//! puts the process into its session and group, forks the process's own children
//! (so each one gets its dumped parent), sets what is simplest to set from inside
//! (umask, root, cwd, signal actions, the fd table and then the epoll registrations,
//! which the kernel keys by fd number, the threads with their tids),
//! reports on a pipe and parks in `pause()` with every signal blocked. The restorer
//! then seizes the parked tasks and rebuilds their memory and registers from outside
//! (see `memory` and `thread`).
//!
//! Code after `clone3` in the child only reads the prepared [`SpawnPlan`] and makes
//! raw system calls: it never allocates, so it is safe after a fork. Threads are
//! created by [`spawn_parked_thread`] with inline assembly: the new thread runs a
//! two-instruction `pause` loop that needs no stack and no TLS.
//!
//! Each child sets `PR_SET_PDEATHSIG` to SIGKILL at once (the dumped value is restored
//! later), so if the restorer dies, the half-built tree dies with it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// The kernel's `struct sigaction` for rt_sigaction(2) on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// How a process reaches its process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pgid {
    /// Keep the parent's group (or the session's, after `setsid`).
    Inherit,
    /// `setpgid(0, 0)`: lead a new group.
    Own,
    /// `setpgid(0, pgid)`: join a group led by an earlier process.
    Join(i32),
}

/// What one process does after it is created.
#[derive(Debug, Clone)]
pub struct SpawnNode {
    pub pid: i32,
    pub setsid: bool,
    /// A zombie: once in its session and group (and reported ready), the process ends
    /// with this wait status and stays for its parent to reap.
    pub exit_status: Option<i32>,
    pub pgid: Pgid,
    /// Indices of the children in [`SpawnPlan::nodes`].
    pub children: Vec<usize>,
    /// Thread ids other than the leader's.
    pub threads: Vec<i32>,
    /// `(source fd in the restorer, target fd, close-on-exec)`.
    pub fds: Vec<(RawFd, RawFd, bool)>,
    /// `(epoll fd, watched fd, events, data)`, registered once `fds` are installed.
    pub epoll: Vec<(RawFd, RawFd, u32, u64)>,
    pub root: Option<CString>,
    pub cwd: Option<CString>,
    pub umask: u32,
    pub sigactions: Vec<(i32, KernelSigaction)>,
}

/// The whole tree to create. Index 0 is the root; children come after parents.
#[derive(Debug, Clone)]
pub struct SpawnPlan {
    pub nodes: Vec<SpawnNode>,
    /// Every source fd (and the report pipe) is at or above this; targets are below.
    pub fd_base: RawFd,
}

/// The step at which a child failed, as reported on the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Stage {
    Ready = 0,
    Clone = 1,
    Setsid = 2,
    Setpgid = 3,
    Root = 4,
    Cwd = 5,
    Sigaction = 6,
    Fds = 7,
    Thread = 8,
    Parent = 9,
    Epoll = 10,
}

impl Stage {
    fn from_raw(v: i32) -> Option<Stage> {
        use Stage::*;
        [
            Ready, Clone, Setsid, Setpgid, Root, Cwd, Sigaction, Fds, Thread, Parent, Epoll,
        ]
        .into_iter()
        .find(|s| *s as i32 == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Stage::Ready => "ready",
            Stage::Clone => "clone3 with set_tid",
            Stage::Setsid => "setsid",
            Stage::Setpgid => "setpgid",
            Stage::Root => "chroot",
            Stage::Cwd => "chdir to the dumped cwd",
            Stage::Sigaction => "rt_sigaction",
            Stage::Fds => "installing descriptors",
            Stage::Thread => "clone3 of a thread with set_tid",
            Stage::Parent => "checking the parent",
            Stage::Epoll => "epoll registration",
        }
    }
}

/// Errors creating the tree.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("creating the report pipe failed")]
    Pipe(#[source] Errno),
    #[error("creating pid {pid}: {stage} failed{hint}")]
    Child {
        pid: i32,
        stage: &'static str,
        hint: &'static str,
        #[source]
        source: Errno,
    },
    #[error("creating pid {pid}: epoll registration of fd {fd} (in epoll fd {epfd}) failed")]
    Epoll {
        pid: i32,
        epfd: RawFd,
        fd: RawFd,
        #[source]
        source: Errno,
    },
    #[error("the tree did not report ready within {0:?} ({1} of {2} processes did)")]
    Timeout(Duration, usize, usize),
    #[error("a process of the tree died before reporting ({0} of {1} did)")]
    Died(usize, usize),
}

/// The created tree; the processes are parked, not yet traced.
#[derive(Debug)]
pub struct Spawned {
    pub root: i32,
    /// Every process that reported ready (root included).
    pub ready: Vec<i32>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    pid: i32,
    stage: i32,
    errno: i32,
    /// The descriptors the failed step concerned (epoll: the epoll fd and the
    /// watched fd), or -1.
    fds: [RawFd; 2],
}

/// Creates the tree of `plan`. On error, whatever was created is left for the caller's
/// guard to kill: the root's pid is in `created_root` as soon as it exists.
pub fn spawn_tree(
    plan: &SpawnPlan,
    timeout: Duration,
    created_root: &mut Option<i32>,
) -> Result<Spawned, SpawnError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let report_fd = nix::fcntl::fcntl(
        &write_end,
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(plan.fd_base),
    )
    .map_err(SpawnError::Pipe)?;
    drop(write_end);
    // SAFETY: fcntl just returned this new descriptor; we own it.
    let report = unsafe { OwnedFd::from_raw_fd(report_fd) };

    let me = std::process::id() as i32;
    let root = &plan.nodes[0];
    // SAFETY: fork-like clone3 of a single-threaded process; the child runs only
    // `child_main`, which never returns and makes no allocations.
    let ret = unsafe { clone_process(root.pid) };
    if ret == 0 {
        // SAFETY: we are the new child; see above.
        unsafe { child_main(plan, 0, report.as_raw_fd(), me) }
    }
    if ret < 0 {
        let source = Errno::from_raw(-ret as i32);
        return Err(child_error(root.pid, Stage::Clone, source));
    }
    *created_root = Some(ret as i32);
    drop(report);

    let ready = collect_reports(&read_end, plan.nodes.len(), timeout)?;
    Ok(Spawned {
        root: ret as i32,
        ready,
    })
}

fn child_error(pid: i32, stage: Stage, source: Errno) -> SpawnError {
    let hint = match (stage, source) {
        (Stage::Clone | Stage::Thread, Errno::EEXIST) => " (the pid is in use)",
        _ => "",
    };
    SpawnError::Child {
        pid,
        stage: stage.describe(),
        hint,
        source,
    }
}

fn collect_reports(
    read_end: &OwnedFd,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<i32>, SpawnError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + timeout;
    let mut ready = Vec::new();
    while ready.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(read_end),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => {
                return Err(SpawnError::Timeout(timeout, ready.len(), expected));
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SpawnError::Pipe(e)),
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        let mut rec = Report::default();
        // SAFETY: reading at most size_of::<Report>() bytes into a plain-integer struct.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                (&mut rec as *mut Report).cast(),
                std::mem::size_of::<Report>(),
            )
        };
        if n == 0 {
            return Err(SpawnError::Died(ready.len(), expected));
        }
        if n != std::mem::size_of::<Report>() as isize {
            return Err(SpawnError::Pipe(Errno::last()));
        }
        match Stage::from_raw(rec.stage) {
            Some(Stage::Ready) => ready.push(rec.pid),
            Some(Stage::Epoll) => {
                return Err(SpawnError::Epoll {
                    pid: rec.pid,
                    epfd: rec.fds[0],
                    fd: rec.fds[1],
                    source: Errno::from_raw(rec.errno),
                });
            }
            Some(stage) => return Err(child_error(rec.pid, stage, Errno::from_raw(rec.errno))),
            None => return Err(SpawnError::Pipe(Errno::EPROTO)),
        }
    }
    Ok(ready)
}

/// Forks the calling process into a child with pid `pid`. Returns 0 in the child.
///
/// # Safety
/// The caller must be single-threaded, and the child must only run fork-safe code.
unsafe fn clone_process(pid: i32) -> i64 {
    let set_tid = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: `args` and `set_tid` outlive the call; without CLONE_VM the child gets a
    // copy of this stack and returns here with 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        -(Errno::last() as i64)
    } else {
        ret
    }
}

/// Creates a thread with id `tid` that parks in a `pause()` loop. Returns the tid or
/// `-errno`.
///
/// # Safety
/// Signals must be blocked in the caller (the thread inherits the mask): the parked
/// thread runs on the caller's stack pointer and must never take a signal.
pub unsafe fn spawn_parked_thread(tid: i32) -> i64 {
    let set_tid = [tid];
    let args = CloneArgs {
        flags: (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let ret: i64;
    // SAFETY: the new thread (rax == 0) never leaves the asm block: it loops on
    // pause(2) without touching memory or the stack. The caller's path continues with
    // the syscall result in rax; rcx and r11 are clobbered by `syscall`.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "3:",
            "mov eax, {pause}",
            "syscall",
            "jmp 3b",
            "2:",
            pause = const libc::SYS_pause,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn report(fd: RawFd, pid: i32, stage: Stage, errno: i32) {
    send(
        fd,
        &Report {
            pid,
            stage: stage as i32,
            errno,
            fds: [-1, -1],
        },
    );
}

fn send(fd: RawFd, rec: &Report) {
    // SAFETY: writes a plain struct smaller than PIPE_BUF (atomic).
    unsafe {
        libc::write(
            fd,
            (rec as *const Report).cast(),
            std::mem::size_of::<Report>(),
        )
    };
}

fn fail(fd: RawFd, pid: i32, stage: Stage) -> ! {
    report(fd, pid, stage, Errno::last_raw());
    // SAFETY: leaving the child without running any of the restorer's exit handlers.
    unsafe { libc::_exit(1) }
}

/// The program of every created process; see the module docs.
///
/// Ends the calling process so that its parent's `wait` reports `status`: an exit code,
/// or death by a signal (without a core file: RLIMIT_CORE goes to 0 first).
///
/// # Safety
/// Async-signal-safe; for a child of `clone_process` that runs nothing else.
unsafe fn exit_with(status: i32) -> ! {
    let sig = status & 0x7f;
    // SAFETY: raw system calls on values of this stack.
    unsafe {
        if sig != 0 {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            let dfl = KernelSigaction {
                handler: libc::SIG_DFL as u64,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                0usize,
                8usize,
            );
            let mask: u64 = !(1u64 << (sig - 1));
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &mask,
                0usize,
                8usize,
            );
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit((status >> 8) & 0xff)
    }
}

/// # Safety
/// Must run only in a process just created by `clone_process` from a single-threaded
/// restorer.
unsafe fn child_main(plan: &SpawnPlan, index: usize, report_fd: RawFd, parent: i32) -> ! {
    let node = &plan.nodes[index];
    let all: u64 = !0;
    // SAFETY: raw system calls with arguments that live on this stack or in the plan,
    // which this child's copy of memory holds unchanged.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all,
            0usize,
            8usize,
        );
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            fail(report_fd, node.pid, Stage::Parent);
        }
        if node.setsid && libc::setsid() < 0 {
            fail(report_fd, node.pid, Stage::Setsid);
        }
        let pgid_ok = match node.pgid {
            Pgid::Inherit => true,
            Pgid::Own => libc::setpgid(0, 0) == 0,
            Pgid::Join(g) => libc::setpgid(0, g) == 0,
        };
        if !pgid_ok {
            fail(report_fd, node.pid, Stage::Setpgid);
        }
        if let Some(status) = node.exit_status {
            report(report_fd, node.pid, Stage::Ready, 0);
            exit_with(status);
        }

        for &c in &node.children {
            let child = &plan.nodes[c];
            let ret = clone_process(child.pid);
            if ret == 0 {
                child_main(plan, c, report_fd, node.pid);
            }
            if ret < 0 {
                report(report_fd, child.pid, Stage::Clone, -ret as i32);
                libc::_exit(1);
            }
        }

        libc::umask(node.umask);
        if let Some(root) = &node.root
            && libc::chroot(root.as_ptr()) < 0
        {
            fail(report_fd, node.pid, Stage::Root);
        }
        if let Some(cwd) = &node.cwd
            && libc::chdir(cwd.as_ptr()) < 0
        {
            fail(report_fd, node.pid, Stage::Cwd);
        }
        for (sig, act) in &node.sigactions {
            let ret = libc::syscall(
                libc::SYS_rt_sigaction,
                *sig,
                act as *const KernelSigaction,
                0usize,
                8usize,
            );
            if ret < 0 {
                fail(report_fd, node.pid, Stage::Sigaction);
            }
        }

        if libc::syscall(libc::SYS_close_range, 0u32, (plan.fd_base - 1) as u32, 0u32) < 0 {
            fail(report_fd, node.pid, Stage::Fds);
        }
        for &(src, dst, cloexec) in &node.fds {
            let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
            if libc::dup3(src, dst, flags) < 0 {
                fail(report_fd, node.pid, Stage::Fds);
            }
        }
        for &(epfd, fd, events, data) in &node.epoll {
            let mut event = libc::epoll_event { events, u64: data };
            let ret = libc::syscall(
                libc::SYS_epoll_ctl,
                epfd,
                libc::EPOLL_CTL_ADD,
                fd,
                &mut event as *mut libc::epoll_event,
            );
            if ret < 0 {
                let rec = Report {
                    pid: node.pid,
                    stage: Stage::Epoll as i32,
                    errno: Errno::last_raw(),
                    fds: [epfd, fd],
                };
                send(report_fd, &rec);
                libc::_exit(1);
            }
        }

        for &tid in &node.threads {
            let ret = spawn_parked_thread(tid);
            if ret < 0 {
                report(report_fd, tid, Stage::Thread, -ret as i32);
                libc::_exit(1);
            }
        }

        report(report_fd, node.pid, Stage::Ready, 0);
        loop {
            libc::pause();
        }
    }
}
