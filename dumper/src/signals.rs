//! Signal and timer state: handlers, pending signals, itimers and POSIX timers.
//!
//! Handlers (`rt_sigaction`), itimers (`getitimer`) and POSIX timer settings
//! (`timer_gettime`, `timer_getoverrun`) can only be asked by the task itself, so they
//! go through the parasite's remote syscalls. Pending signals are read with
//! `PTRACE_PEEKSIGINFO` without dequeuing them, and the list of POSIX timers comes
//! from `/proc/PID/timers`.

use std::fs;

use cryo_format::schema::{
    ItimerEntry, PosixTimerEntry, SaEntry, SiginfoEntry, SignalQueueEntry, TaskTimersEntry,
};

use crate::parasite::Parasite;
use crate::ptrace;
use crate::task::{TaskError, u64_at};

/// Signal handlers 1..=64 (SIGKILL and SIGSTOP left out, as CRIU does).
pub fn sigactions(p: &mut Parasite) -> Result<Vec<SaEntry>, TaskError> {
    let mut out = Vec::with_capacity(62);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        let at = p.scratch_addr(0);
        let (_, b) = p.call_out("rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, at, 8], 32)?;
        out.push(SaEntry {
            sigaction: u64_at(&b, 0),
            flags: u64_at(&b, 1),
            restorer: u64_at(&b, 2),
            mask: u64_at(&b, 3),
            compat_sigaction: Some(false),
            mask_extended: None,
        });
    }
    Ok(out)
}

pub fn timers(pid: i32, p: &mut Parasite) -> Result<TaskTimersEntry, TaskError> {
    let posix = posix_timers(pid, p)?;
    let mut get = |which: u64| -> Result<ItimerEntry, TaskError> {
        let at = p.scratch_addr(0);
        let (_, b) = p.call_out("getitimer", libc::SYS_getitimer, &[which, at], 32)?;
        Ok(ItimerEntry {
            isec: u64_at(&b, 0),
            iusec: u64_at(&b, 1),
            vsec: u64_at(&b, 2),
            vusec: u64_at(&b, 3),
        })
    };
    Ok(TaskTimersEntry {
        real: get(libc::ITIMER_REAL as u64)?,
        virt: get(libc::ITIMER_VIRTUAL as u64)?,
        prof: get(libc::ITIMER_PROF as u64)?,
        posix,
    })
}

/// Parses `/proc/PID/timers`: (id, signo, sival_ptr, sigev_notify, notify tid, clock).
pub fn parse_posix_timers(text: &str) -> Vec<(u32, u32, u64, u32, Option<i32>, u32)> {
    let mut out = Vec::new();
    let mut cur: Option<(u32, u32, u64, u32, Option<i32>, u32)> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "ID" => {
                out.extend(cur.take());
                cur = value.parse().ok().map(|id| (id, 0, 0, 0, None, 0));
            }
            "signal" => {
                if let (Some(t), Some((signo, ptr))) = (cur.as_mut(), value.split_once('/')) {
                    t.1 = signo.parse().unwrap_or(0);
                    t.2 = u64::from_str_radix(ptr, 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((how, target))) = (cur.as_mut(), value.split_once('/')) {
                    let base = match how {
                        "none" => libc::SIGEV_NONE,
                        "thread" => libc::SIGEV_THREAD,
                        _ => libc::SIGEV_SIGNAL,
                    } as u32;
                    let tid = target.strip_prefix("tid.").and_then(|n| n.parse().ok());
                    t.3 = base
                        | if tid.is_some() {
                            libc::SIGEV_THREAD_ID as u32
                        } else {
                            0
                        };
                    t.4 = tid;
                }
            }
            "ClockID" => {
                if let Some(t) = cur.as_mut() {
                    t.5 = value.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// POSIX timers of the process, with their settings read by remote `timer_gettime`.
fn posix_timers(pid: i32, p: &mut Parasite) -> Result<Vec<PosixTimerEntry>, TaskError> {
    let text = fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    let mut out = Vec::new();
    for (id, signo, sival, notify, tid, clock) in parse_posix_timers(&text) {
        let at = p.scratch_addr(0);
        let (_, b) = p.call_out(
            "timer_gettime",
            libc::SYS_timer_gettime,
            &[id as u64, at],
            32,
        )?;
        let overrun =
            p.remote()
                .syscall("timer_getoverrun", libc::SYS_timer_getoverrun, &[id as u64])?;
        out.push(PosixTimerEntry {
            it_id: id,
            clock_id: clock,
            si_signo: signo,
            it_sigev_notify: notify,
            sival_ptr: sival,
            overrun: overrun as u32,
            isec: u64_at(&b, 0),
            insec: u64_at(&b, 1),
            vsec: u64_at(&b, 2),
            vnsec: u64_at(&b, 3),
            notify_thread_id: tid,
        });
    }
    Ok(out)
}

/// Pending signals of a thread (`shared`: of its process) as a `signal_queue_entry`.
pub fn signal_queue(tid: i32, shared: bool) -> Result<SignalQueueEntry, TaskError> {
    let signals = ptrace::pending_signals(tid, shared)?
        .into_iter()
        .map(|raw| SiginfoEntry {
            siginfo: raw.to_vec(),
        })
        .collect();
    Ok(SignalQueueEntry { signals })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_parse_into_notify_and_signal() {
        let text = "ID: 0\nsignal: 34/0000000000001234\nnotify: signal/pid.16080\nClockID: 1\n\
                    ID: 3\nsignal: 14/0000000000000000\nnotify: signal/tid.77\nClockID: 0\n";
        let t = parse_posix_timers(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], (0, 34, 0x1234, libc::SIGEV_SIGNAL as u32, None, 1));
        assert_eq!(
            t[1],
            (
                3,
                14,
                0,
                (libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID) as u32,
                Some(77),
                0
            )
        );
    }
}
