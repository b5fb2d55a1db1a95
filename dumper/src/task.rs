//! Per-process and per-thread state of a frozen task, in image form.
//!
//! Most of it comes from /proc (stat, status, auxv, limits through `prlimit`) and
//! ptrace (registers, XSAVE area, blocked mask, TLS slots, rseq). What only the task
//! itself can tell — signal handlers, itimers, the current brk, its tid address,
//! sigaltstack, pdeath signal, dumpable and THP flags, securebits — is asked through
//! remote syscalls run by the parasite, with results passed back in its scratch area.

use std::fs;

use cryo_format::schema::{
    CoreEntry, CredsEntry, RlimitEntry, RseqEntry, TaskCoreEntry, TaskRlimitsEntry,
    ThreadCoreEntry, ThreadInfoX86, ThreadSasEntry, UserDescT,
};
use thiserror::Error;

use crate::parasite::{Parasite, ParasiteError, Scratch};
use crate::ptrace::{self, PtraceError};
use crate::regs;
use crate::remote::{self, RemoteThread};
use crate::signals;

/// `core_entry.march.X86_64`.
const MARCH_X86_64: i32 = 1;
/// `task_state` of a live task (CRIU's TASK_ALIVE).
const TASK_ALIVE: u32 = 1;
/// `task_state` of a zombie (CRIU's TASK_DEAD).
const TASK_DEAD: u32 = 2;
/// `task_state` of a task in a job-control stop (CRIU's TASK_STOPPED).
const TASK_STOPPED: u32 = 3;

/// The core of a zombie: only its name and the wait status its parent will collect, as
/// CRIU writes it (a zombie has no memory, files or registers left).
pub fn zombie_core(comm: &str, status: i32) -> CoreEntry {
    CoreEntry {
        mtype: MARCH_X86_64,
        tc: Some(TaskCoreEntry {
            task_state: TASK_DEAD,
            exit_code: status as u32,
            comm: comm.to_string(),
            ..TaskCoreEntry::default()
        }),
        ..CoreEntry::default()
    }
}

/// A failure while collecting task state.
#[derive(Debug, Error)]
pub enum TaskError {
    #[error(transparent)]
    Parasite(#[from] ParasiteError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("process {pid}: cannot read {path}")]
    Proc {
        pid: i32,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: cannot parse {path}: {what}")]
    Parse {
        pid: i32,
        path: String,
        what: &'static str,
    },
}

fn read(pid: i32, path: String) -> Result<String, TaskError> {
    fs::read_to_string(&path).map_err(|source| TaskError::Proc { pid, path, source })
}

/// Memory-layout fields of `/proc/PID/stat`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// Reads the mm layout from `/proc/PID/stat`.
pub fn mm_layout(pid: i32) -> Result<MmLayout, TaskError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(pid, path.clone())?;
    let bad = || TaskError::Parse {
        pid,
        path: path.clone(),
        what: "mm fields",
    };
    let close = text.rfind(')').ok_or_else(bad)?;
    let rest: Vec<u64> = text[close + 1..]
        .split_whitespace()
        .skip(1)
        .map(|s| s.parse::<i64>().map(|v| v as u64).unwrap_or(0))
        .collect();
    // rest[0] is field 4 (ppid): field n is rest[n - 4].
    let f = |n: usize| rest.get(n - 4).copied().ok_or_else(bad);
    Ok(MmLayout {
        start_code: f(26)?,
        end_code: f(27)?,
        start_stack: f(28)?,
        start_data: f(45)?,
        end_data: f(46)?,
        start_brk: f(47)?,
        arg_start: f(48)?,
        arg_end: f(49)?,
        env_start: f(50)?,
        env_end: f(51)?,
    })
}

/// `/proc/PID/auxv` as a flat list of (type, value) words, without the AT_NULL end.
pub fn saved_auxv(pid: i32) -> Result<Vec<u64>, TaskError> {
    let path = format!("/proc/{pid}/auxv");
    let bytes = fs::read(&path).map_err(|source| TaskError::Proc { pid, path, source })?;
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let mut out = Vec::new();
    for pair in words.chunks_exact(2) {
        if pair[0] == 0 {
            break;
        }
        out.extend_from_slice(pair);
    }
    Ok(out)
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn cap_words(status: &str, name: &str) -> Vec<u32> {
    let v = status_field(status, name)
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    vec![v as u32, (v >> 32) as u32]
}

/// Credentials of thread `tid` from its status file (securebits filled in by the caller).
pub fn creds(pid: i32, tid: i32) -> Result<CredsEntry, TaskError> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let status = read(pid, path.clone())?;
    let ids = |name: &str| -> Result<Vec<u32>, TaskError> {
        let v: Vec<u32> = status_field(&status, name)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if v.len() != 4 {
            return Err(TaskError::Parse {
                pid,
                path: path.clone(),
                what: "Uid/Gid",
            });
        }
        Ok(v)
    };
    let uid = ids("Uid")?;
    let gid = ids("Gid")?;
    let groups = status_field(&status, "Groups")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok(CredsEntry {
        uid: uid[0],
        euid: uid[1],
        suid: uid[2],
        fsuid: uid[3],
        gid: gid[0],
        egid: gid[1],
        sgid: gid[2],
        fsgid: gid[3],
        cap_inh: cap_words(&status, "CapInh"),
        cap_prm: cap_words(&status, "CapPrm"),
        cap_eff: cap_words(&status, "CapEff"),
        cap_bnd: cap_words(&status, "CapBnd"),
        cap_amb: cap_words(&status, "CapAmb"),
        secbits: 0,
        groups,
        no_new_privs: status_field(&status, "NoNewPrivs")
            .and_then(|s| s.parse().ok())
            .filter(|&v: &u32| v != 0),
        ..CredsEntry::default()
    })
}

/// The umask from `/proc/PID/status`.
pub fn umask(pid: i32) -> Result<u32, TaskError> {
    let path = format!("/proc/{pid}/status");
    let status = read(pid, path.clone())?;
    status_field(&status, "Umask")
        .and_then(|s| u32::from_str_radix(s, 8).ok())
        .ok_or(TaskError::Parse {
            pid,
            path,
            what: "Umask",
        })
}

fn rlimits(pid: i32) -> TaskRlimitsEntry {
    let rlimits = (0..16)
        .map(|res| {
            let mut old = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit64 with a null new limit only writes `old`, which we own.
            unsafe { libc::prlimit64(pid, res, std::ptr::null(), &mut old) };
            RlimitEntry {
                cur: old.rlim_cur,
                max: old.rlim_max,
            }
        })
        .collect();
    TaskRlimitsEntry { rlimits }
}

pub(crate) fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// What the process-wide remote calls return.
#[derive(Debug)]
pub struct ProcessRemote {
    pub brk: u64,
    pub dumpable: i32,
    pub thp_disabled: bool,
    pub child_subreaper: bool,
}

/// Asks the process (through the parasite) for the mm fields only it knows.
pub fn process_remote(p: &mut Parasite) -> Result<ProcessRemote, TaskError> {
    let r = p.remote();
    let brk = r.syscall("brk", libc::SYS_brk, &[0])?;
    let dumpable = r.syscall(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
    )? as i32;
    let thp = r.syscall(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        &[libc::PR_GET_THP_DISABLE as u64],
    )?;
    let at = p.scratch_addr(0);
    let (_, b) = p.call_out(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        &[libc::PR_GET_CHILD_SUBREAPER as u64, at],
        4,
    )?;
    Ok(ProcessRemote {
        brk,
        dumpable,
        thp_disabled: thp != 0,
        child_subreaper: b != [0, 0, 0, 0],
    })
}

/// Builds the `core` entry of one thread. `remote` must be a [`RemoteThread`] over
/// `tid`, sharing the parasite's scratch area (same mm).
fn thread_core(
    pid: i32,
    tid: i32,
    remote: &mut RemoteThread,
    p: &Scratch,
) -> Result<(ThreadInfoX86, ThreadCoreEntry, u64), TaskError> {
    let regs = remote::image_regs(remote.orig_regs());
    let xsave = ptrace::get_xstate(tid)?;
    let sigmask = remote.orig_sigmask();
    let mut tls = Vec::with_capacity(3);
    for entry in 12..=14 {
        let d = ptrace::get_thread_area(tid, entry)?;
        tls.push(UserDescT {
            entry_number: d.entry_number,
            base_addr: d.base_addr,
            limit: d.limit,
            seg_32bit: d.flags & 1 != 0,
            contents_h: d.flags & 4 != 0,
            contents_l: d.flags & 2 != 0,
            read_exec_only: d.flags & 8 != 0,
            limit_in_pages: d.flags & 16 != 0,
            seg_not_present: d.flags & 32 != 0,
            usable: d.flags & 64 != 0,
        });
    }

    let out = p.addr(0);
    p.write(0, &[0u8; 32])?;
    remote.syscall(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, out],
    )?;
    let clear_tid_addr = u64_at(&p.read(0, 8)?, 0);
    p.write(0, &[0u8; 32])?;
    remote.syscall("sigaltstack", libc::SYS_sigaltstack, &[0, out])?;
    let ss = p.read(0, 24)?;
    let sas = ThreadSasEntry {
        ss_sp: u64_at(&ss, 0),
        ss_flags: u64_at(&ss, 1) as u32,
        ss_size: u64_at(&ss, 2),
    };
    p.write(0, &[0u8; 8])?;
    remote.syscall(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, out],
    )?;
    let pdeath = u32::from_ne_bytes(p.read(0, 4)?.try_into().expect("4 bytes"));
    let secbits = remote.syscall(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        &[libc::PR_GET_SECUREBITS as u64],
    )?;

    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list writes one pointer and one size into locals we own.
    unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) };
    // SAFETY: plain syscalls on a tid; errno is ignored (the fields are then absent).
    let policy = unsafe { libc::sched_getscheduler(tid) };
    // SAFETY: getpriority on a tid; returns the nice value.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_getparam writes one sched_param into a local we own.
    let prio =
        (unsafe { libc::sched_getparam(tid, &mut param) } == 0).then_some(param.sched_priority);

    let mut creds = creds(pid, tid)?;
    creds.secbits = secbits as u32;
    let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .ok();
    let rseq = ptrace::get_rseq_config(tid)?.map(|c| RseqEntry {
        rseq_abi_pointer: c.rseq_abi_pointer,
        rseq_abi_size: c.rseq_abi_size,
        signature: c.signature,
        rseq_cs_pointer: None,
    });

    let info = ThreadInfoX86 {
        clear_tid_addr,
        gpregs: regs::gpregs(&regs),
        fpregs: regs::fpregs(&xsave),
        tls,
    };
    let core = ThreadCoreEntry {
        futex_rla: head,
        futex_rla_len: len as u32,
        sched_nice: Some(nice),
        sched_policy: (policy >= 0).then_some(policy as u32),
        sched_prio: prio.map(|p| p as u32),
        blk_sigset: (tid != pid).then_some(sigmask),
        sas: Some(sas),
        pdeath_sig: (pdeath != 0).then_some(pdeath),
        signals_p: Some(signals::signal_queue(tid, false)?),
        creds: Some(creds),
        comm,
        rseq_entry: rseq,
        ..ThreadCoreEntry::default()
    };
    Ok((info, core, sigmask))
}

/// Builds the core entries of every thread of `pid` (leader first).
///
/// The leader's entries use the parasite's own remote thread; the other threads are
/// taken over one at a time and restored right after.
pub fn cores(
    pid: i32,
    threads: &[i32],
    p: &mut Parasite,
    syscall_ip: u64,
    remote_info: &ProcessRemote,
    stop_signal: Option<i32>,
) -> Result<Vec<(i32, CoreEntry)>, TaskError> {
    let stat =
        crate::tree::read_stat(&format!("/proc/{pid}/stat")).map_err(|e| TaskError::Parse {
            pid,
            path: format!("/proc/{pid}/stat: {e}"),
            what: "stat",
        })?;
    let personality = read(pid, format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let loginuid = read(pid, format!("/proc/{pid}/loginuid"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let oom = read(pid, format!("/proc/{pid}/oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let sigacts = signals::sigactions(p)?;
    let timers = signals::timers(pid, p)?;
    let shared_signals = signals::signal_queue(pid, true)?;

    let mut out = Vec::with_capacity(threads.len());
    for &tid in threads {
        let (info, tcore, sigmask) = if tid == pid {
            let scratch = p.scratch().clone();
            thread_core(pid, tid, p.remote(), &scratch)?
        } else {
            let mut rt = RemoteThread::new(tid, syscall_ip)?;
            let r = thread_core(pid, tid, &mut rt, p.scratch());
            rt.restore()?;
            r?
        };
        let tc = (tid == pid).then(|| TaskCoreEntry {
            task_state: if stop_signal.is_some() {
                TASK_STOPPED
            } else {
                TASK_ALIVE
            },
            stop_signo: stop_signal.map(|s| s as u32),
            exit_code: 0,
            personality,
            flags: stat.flags & 0x0040_0000,
            blk_sigset: sigmask,
            comm: stat.comm.clone(),
            timers: Some(timers.clone()),
            rlimits: Some(rlimits(pid)),
            signals_s: Some(shared_signals.clone()),
            loginuid,
            oom_score_adj: oom,
            sigactions: sigacts.clone(),
            child_subreaper: Some(remote_info.child_subreaper),
            ..TaskCoreEntry::default()
        });
        out.push((
            tid,
            CoreEntry {
                mtype: MARCH_X86_64,
                thread_info: Some(info),
                tc,
                thread_core: Some(tcore),
                ..CoreEntry::default()
            },
        ));
    }
    Ok(out)
}
