//! The switch: per-thread kernel state, the final registers, and the last steps of a
//! process before it is let go.
//!
//! State that the kernel keeps per thread can only be set by the thread itself, so
//! each thread runs a few remote calls at the scratch area (shared by all threads of
//! the process): `set_tid_address`, `set_robust_list`, `sigaltstack`, `rseq`, and
//! `PR_SET_NAME`; pending signals are queued back from inside too. The blocked mask
//! goes in last with `PTRACE_SETSIGMASK`: until then every signal stays blocked.
//!
//! The leader finishes last: itimers, the parent-death signal, the subreaper flag,
//! closing the restorer's descriptors it still holds, and — stopped at the exit of
//! the `munmap` of the scratch area itself — its final registers.

use cryo_format::schema::ThreadCoreEntry;

use crate::inject::{InjectError, Tracee};
use crate::memory::{SCRATCH_LEN, Scratch};
use crate::plan::{ProcessPlan, ThreadPlan};
use crate::regs;

/// Errors of the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("thread {tid}: {step}")]
    Remote {
        tid: i32,
        step: &'static str,
        #[source]
        source: InjectError,
    },
    #[error("thread {tid}: building the FPU state")]
    Fpu {
        tid: i32,
        #[source]
        source: regs::RegsError,
    },
    #[error("thread {tid}: a pending signal's siginfo is {len} bytes, not 128")]
    Siginfo { tid: i32, len: usize },
    #[error("process {pid}: setting rlimit {resource}")]
    Rlimit {
        pid: i32,
        resource: usize,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("thread {tid}: setting its scheduling ({what})")]
    Sched {
        tid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: writing its oom_score_adj {value}")]
    OomScoreAdj {
        pid: i32,
        value: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Gives thread `tid` its dumped scheduling: policy with its priority, and nice value.
/// Set from the restorer (root), so a raised priority needs no privilege of the task's.
pub fn set_sched(tid: i32, thread: &ThreadPlan) -> Result<(), SwitchError> {
    let Some(core) = thread_core(thread) else {
        return Ok(());
    };
    let err = |what| move |source| SwitchError::Sched { tid, what, source };
    if let Some(policy) = core.sched_policy {
        let param = libc::sched_param {
            sched_priority: core.sched_prio.unwrap_or(0) as i32,
        };
        // SAFETY: sched_setscheduler reads one sched_param from our stack.
        if unsafe { libc::sched_setscheduler(tid, policy as i32, &param) } < 0 {
            return Err(err("sched_setscheduler")(std::io::Error::last_os_error()));
        }
    }
    if let Some(nice) = core.sched_nice {
        // SAFETY: setpriority takes no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } < 0 {
            return Err(err("setpriority")(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn remote(tid: i32, step: &'static str) -> impl FnOnce(InjectError) -> SwitchError {
    move |source| SwitchError::Remote { tid, step, source }
}

fn thread_core(thread: &ThreadPlan) -> Option<&ThreadCoreEntry> {
    thread.core.thread_core.as_ref()
}

/// Sets the per-thread kernel state of `thread` (whose tracee is `t`, of process
/// `pid`) and queues its pending signals. Returns the blocked mask the thread must get;
/// until then every signal stays blocked, so nothing is delivered mid-restore.
pub fn prepare_thread(
    t: &Tracee,
    pid: i32,
    thread: &ThreadPlan,
    process_blocked: u64,
    scratch: Scratch,
    leader: bool,
) -> Result<u64, SwitchError> {
    let tid = thread.tid;
    let info = thread
        .core
        .thread_info
        .as_ref()
        .expect("plan checks thread_info");
    t.syscall(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[info.clear_tid_addr],
    )
    .map_err(remote(tid, "set_tid_address"))?;

    let Some(tcore) = thread_core(thread) else {
        return Ok(process_blocked);
    };
    if tcore.futex_rla != 0 {
        t.syscall(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[tcore.futex_rla, tcore.futex_rla_len as u64],
        )
        .map_err(remote(tid, "set_robust_list"))?;
    }

    // The leader still has the restorer's alternate stack; new threads have none.
    let sas_disabled = tcore
        .sas
        .is_none_or(|s| s.ss_flags & libc::SS_DISABLE as u32 != 0);
    if leader || !sas_disabled {
        let mut stack = [0u8; 24];
        if let Some(sas) = tcore.sas.filter(|_| !sas_disabled) {
            stack[0..8].copy_from_slice(&sas.ss_sp.to_le_bytes());
            stack[8..12].copy_from_slice(&sas.ss_flags.to_le_bytes());
            stack[16..24].copy_from_slice(&sas.ss_size.to_le_bytes());
        } else {
            stack[8..12].copy_from_slice(&(libc::SS_DISABLE as u32).to_le_bytes());
        }
        t.write(scratch.args(), &stack)
            .map_err(remote(tid, "writing stack_t"))?;
        t.syscall("sigaltstack", libc::SYS_sigaltstack, &[scratch.args(), 0])
            .map_err(remote(tid, "sigaltstack"))?;
    }

    if let Some(rseq) = tcore.rseq_entry.filter(|r| r.rseq_abi_pointer != 0) {
        t.syscall(
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                0,
                rseq.signature as u64,
            ],
        )
        .map_err(remote(tid, "rseq"))?;
    }

    if let Some(comm) = &tcore.comm {
        let mut name = comm.as_bytes()[..comm.len().min(15)].to_vec();
        name.push(0);
        t.write(scratch.strings(), &name)
            .map_err(remote(tid, "writing comm"))?;
        t.syscall(
            "prctl",
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, scratch.strings()],
        )
        .map_err(remote(tid, "PR_SET_NAME"))?;
    }

    if let Some(nice) = tcore.sched_nice {
        // SAFETY: plain syscall wrapper on a tid we created.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as u32, nice) };
    }
    if let Some(queue) = &tcore.signals_p {
        for entry in &queue.signals {
            queue_signal(t, scratch, &entry.siginfo, Some((pid, tid)))?;
        }
    }
    if tcore.seccomp_mode.is_some_and(|m| m != 0) {
        // TODO: seccomp filters from seccomp.img, installed last.
        tracing::warn!(tid, "seccomp filters are not restored");
    }

    Ok(tcore.blk_sigset.unwrap_or(process_blocked))
}

/// Queues one dumped siginfo (128 raw bytes) back, process-wide or to one thread.
/// Run inside the process itself, the kernel accepts any `si_code`.
fn queue_signal(
    t: &Tracee,
    scratch: Scratch,
    siginfo: &[u8],
    thread: Option<(i32, i32)>,
) -> Result<(), SwitchError> {
    let tid = t.tid;
    if siginfo.len() != 128 {
        return Err(SwitchError::Siginfo {
            tid,
            len: siginfo.len(),
        });
    }
    let signo = u32::from_le_bytes(siginfo[0..4].try_into().expect("4 bytes"));
    t.write(scratch.args(), siginfo)
        .map_err(remote(tid, "writing a siginfo"))?;
    let queued = match thread {
        Some((pid, tid)) => t.syscall(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[pid as u64, tid as u64, signo as u64, scratch.args()],
        ),
        None => t.syscall(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            &[tid as u64, signo as u64, scratch.args()],
        ),
    };
    queued
        .map(drop)
        .map_err(remote(tid, "queueing a pending signal"))
}

/// Sets the FPU state and the general registers the thread resumes with.
pub fn set_final_regs(t: &Tracee, thread: &ThreadPlan) -> Result<(), SwitchError> {
    let tid = thread.tid;
    let info = thread
        .core
        .thread_info
        .as_ref()
        .expect("plan checks thread_info");
    let mut xsave = t.xstate().map_err(remote(tid, "reading the xsave area"))?;
    regs::fill_xstate(tid, &mut xsave, &info.fpregs)
        .map_err(|source| SwitchError::Fpu { tid, source })?;
    t.set_xstate(&xsave)
        .map_err(remote(tid, "setting the xsave area"))?;
    t.set_regs(&regs::user_regs(&info.gpregs))
        .map_err(remote(tid, "setting the registers"))
}

/// Process-wide state and the leader's final switch, ending with its blocked mask
/// `leader_blocked`. Other threads must be done.
pub fn finish_process(
    t: &Tracee,
    proc: &ProcessPlan,
    scratch: Scratch,
    fd_base: i32,
    leader_blocked: u64,
) -> Result<(), SwitchError> {
    let pid = proc.pid;
    let tc = proc.task_core();

    if let Some(timers) = &tc.timers {
        for (which, it) in [
            (libc::ITIMER_REAL, timers.real),
            (libc::ITIMER_VIRTUAL, timers.virt),
            (libc::ITIMER_PROF, timers.prof),
        ] {
            if it.isec == 0 && it.iusec == 0 && it.vsec == 0 && it.vusec == 0 {
                continue;
            }
            // An interval timer caught between expiry and the delivery of its signal
            // reads as value 0 (the kernel re-arms it when the signal is dequeued);
            // setting value 0 would disarm it, so it restarts with a full interval.
            let (vsec, vusec) = if it.vsec == 0 && it.vusec == 0 {
                (it.isec, it.iusec)
            } else {
                (it.vsec, it.vusec)
            };
            let val: Vec<u8> = [it.isec, it.iusec, vsec, vusec]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            t.write(scratch.args(), &val)
                .map_err(remote(pid, "writing itimerval"))?;
            t.syscall(
                "setitimer",
                libc::SYS_setitimer,
                &[which as u64, scratch.args(), 0],
            )
            .map_err(remote(pid, "setitimer"))?;
        }
    }

    if let Some(rl) = &tc.rlimits {
        set_rlimits(pid, &rl.rlimits)?;
    }
    if let Some(value) = tc.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string())
            .map_err(|source| SwitchError::OomScoreAdj { pid, value, source })?;
    }
    // Execution domain and flags (e.g. ADDR_NO_RANDOMIZE): they govern the task's later
    // mappings and execs.
    t.syscall(
        "personality",
        libc::SYS_personality,
        &[u64::from(tc.personality)],
    )
    .map_err(remote(pid, "personality"))?;

    let pdeath = proc.threads[0]
        .core
        .thread_core
        .as_ref()
        .and_then(|c| c.pdeath_sig)
        .unwrap_or(0);
    t.syscall(
        "prctl",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, pdeath as u64],
    )
    .map_err(remote(pid, "PR_SET_PDEATHSIG"))?;
    if tc.child_subreaper == Some(true) {
        t.syscall(
            "prctl",
            libc::SYS_prctl,
            &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
        )
        .map_err(remote(pid, "PR_SET_CHILD_SUBREAPER"))?;
    }
    if let Some(queue) = &tc.signals_s {
        for entry in &queue.signals {
            queue_signal(t, scratch, &entry.siginfo, None)?;
        }
    }
    t.syscall(
        "close_range",
        libc::SYS_close_range,
        &[fd_base as u64, u32::MAX as u64, 0],
    )
    .map_err(remote(pid, "closing the restorer's descriptors"))?;

    t.syscall_to_exit("munmap", libc::SYS_munmap, &[scratch.addr, SCRATCH_LEN])
        .map_err(remote(pid, "unmapping the scratch area"))?;
    set_final_regs(t, &proc.threads[0])?;
    t.set_sigmask(leader_blocked)
        .map_err(remote(pid, "sigmask"))
}

/// Sets the dumped limits, never raising a hard limit above the current one (that
/// needs CAP_SYS_RESOURCE).
fn set_rlimits(pid: i32, limits: &[cryo_format::schema::RlimitEntry]) -> Result<(), SwitchError> {
    for (resource, lim) in limits.iter().enumerate() {
        let mut cur = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 writes the current limit into `cur`.
        let ret = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut cur) };
        if ret < 0 {
            continue;
        }
        let max = lim.max.min(cur.rlim_max);
        let new = libc::rlimit64 {
            rlim_cur: lim.cur.min(max),
            rlim_max: max,
        };
        if max < lim.max {
            tracing::warn!(
                pid,
                resource,
                dumped = lim.max,
                kept = max,
                "hard limit not raised"
            );
        }
        // SAFETY: prlimit64 reads `new`.
        let ret = unsafe { libc::prlimit64(pid, resource as _, &new, std::ptr::null_mut()) };
        if ret < 0 {
            return Err(SwitchError::Rlimit {
                pid,
                resource,
                source: nix::errno::Errno::last(),
            });
        }
    }
    Ok(())
}
