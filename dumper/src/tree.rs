//! Finding and freezing the process tree.
//!
//! The tree is walked from the root through `/proc/PID/task/TID/children`, threads
//! through `/proc/PID/task`. Every thread is seized and interrupted as soon as it is
//! found; the walk repeats until a whole pass finds nothing new, because a task may
//! clone or fork between being listed and being stopped. A stopped thread can do
//! neither, so once a pass finds no new thread the tree is frozen and stays so.
//!
//! [`FrozenTree`] is the detach guard: it exists from the first seize, and unless the
//! dump explicitly kills or releases the tree, dropping it detaches every tracee so the
//! tree keeps running as if nothing happened.

use std::collections::BTreeSet;
use std::fs;

use thiserror::Error;

use crate::ptrace::{self, PtraceError};

/// A failure while finding or freezing the tree.
#[derive(Debug, Error)]
pub enum FreezeError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("cannot read {path}")]
    Proc {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {what}")]
    Parse { path: String, what: &'static str },
    #[error("cannot freeze thread {tid} of process {pid}")]
    Seize {
        pid: i32,
        tid: i32,
        #[source]
        source: PtraceError,
    },
    #[error("{tid} is a thread of process {tgid}: dump the process (-t {tgid})")]
    NotAProcess { tid: i32, tgid: i32 },
    #[error("process {pid} (the root, or a thread-group leader whose threads run on) has exited")]
    Zombie { pid: i32 },
    #[error("process {pid} is stopped by a tracer (state {state}): another debugger holds it")]
    Stopped { pid: i32, state: char },
    #[error("the dumper (pid {pid}) is itself inside the tree of {root}; run it detached")]
    SelfInTree { pid: i32, root: i32 },
}

/// One process of the tree, as pstree.img describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub pid: i32,
    /// Parent pid; 0 for the root of the dumped tree.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
    /// A zombie: its name and the wait status its parent has not collected yet. Not
    /// seized (there is nothing left to stop).
    pub zombie: Option<(String, i32)>,
    /// Stopped by job control (state `T`) when the freeze found it: the signal that
    /// stopped it. The dump keeps it stopped, and so does a restore.
    pub stop_signal: Option<i32>,
}

/// Fields of `/proc/PID/stat` the dumper uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub flags: u32,
    pub exit_signal: i32,
    pub start_time: u64,
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat` (or `/proc/PID/task/TID/stat`).
pub fn read_stat(path: &str) -> Result<Stat, FreezeError> {
    let text = fs::read_to_string(path).map_err(|source| FreezeError::Proc {
        path: path.to_string(),
        source,
    })?;
    parse_stat(&text).ok_or(FreezeError::Parse {
        path: path.to_string(),
        what: "stat fields",
    })
}

fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let num = |n: usize| rest.get(n - 3)?.parse::<i64>().ok();
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: num(4)? as i32,
        pgid: num(5)? as i32,
        sid: num(6)? as i32,
        flags: num(9)? as u32,
        start_time: num(22)? as u64,
        exit_signal: num(38)? as i32,
        // Field 52 (Linux 3.5+): the wait status of a zombie.
        exit_code: num(52).unwrap_or(0) as i32,
    })
}

/// The thread group (process) `tid` belongs to, from /proc/TID/status.
fn thread_group_of(tid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `pid` is now a zombie or gone.
fn has_died(pid: i32) -> bool {
    read_stat(&format!("/proc/{pid}/stat")).map_or(true, |st| matches!(st.state, 'Z' | 'X'))
}

/// Thread ids of `pid`, the leader first, then ascending.
pub fn list_threads(pid: i32) -> Result<Vec<i32>, FreezeError> {
    let path = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FreezeError::NoSuchProcess { pid }
        } else {
            FreezeError::Proc {
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    Ok(tids)
}

fn list_children(pid: i32, tids: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for tid in tids {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// A tree whose every thread is seized and stopped; detaches all on drop.
#[derive(Debug)]
pub struct FrozenTree {
    tasks: Vec<TaskInfo>,
    seized: Vec<i32>,
    done: bool,
}

impl FrozenTree {
    /// Seizes and stops every thread of the tree rooted at `root`.
    pub fn freeze(root: i32) -> Result<FrozenTree, FreezeError> {
        let me = std::process::id() as i32;
        if let Some(tgid) = thread_group_of(root)
            && tgid != root
        {
            return Err(FreezeError::NotAProcess { tid: root, tgid });
        }
        let mut tree = FrozenTree {
            tasks: Vec::new(),
            seized: Vec::new(),
            done: false,
        };
        let mut seized: BTreeSet<i32> = BTreeSet::new();
        // Processes found in a job-control stop, with their stop signal.
        let mut job_stopped: std::collections::BTreeMap<i32, i32> = Default::default();

        loop {
            let mut found_new = false;
            let mut tasks = Vec::new();
            let mut queue = vec![(root, 0)];
            while let Some((pid, ppid)) = queue.pop() {
                if pid == me {
                    return Err(FreezeError::SelfInTree { pid: me, root });
                }
                let threads = match list_threads(pid) {
                    Ok(t) => t,
                    // A child that exited between listing and now is not part of the tree.
                    Err(FreezeError::NoSuchProcess { .. }) if pid != root => continue,
                    Err(e) => return Err(e),
                };
                let stat = read_stat(&format!("/proc/{pid}/stat"))?;
                let zombie = match stat.state {
                    // A dead child its (frozen) parent has not reaped: dumped as a
                    // zombie. A zombie leader with live threads is a live process.
                    'Z' | 'X' if pid != root && threads.len() == 1 => {
                        Some((stat.comm.clone(), stat.exit_code))
                    }
                    'Z' | 'X' => return Err(FreezeError::Zombie { pid }),
                    // Stopped by a debugger (another tracer): it cannot be seized.
                    't' if !seized.contains(&pid) => {
                        return Err(FreezeError::Stopped {
                            pid,
                            state: stat.state,
                        });
                    }
                    'T' if !seized.contains(&pid) => {
                        job_stopped.entry(pid).or_insert(libc::SIGSTOP);
                        None
                    }
                    _ => None,
                };
                let stat = if zombie.is_some() {
                    stat
                } else {
                    let mut died = false;
                    for &tid in &threads {
                        if seized.insert(tid) {
                            found_new = true;
                            match seize_one(pid, tid) {
                                Ok(sig) => {
                                    // A group stop reports the signal that caused it.
                                    if tid == pid
                                        && sig != libc::SIGTRAP
                                        && let Some(stop) = job_stopped.get_mut(&pid)
                                    {
                                        *stop = sig;
                                    }
                                }
                                // It died between the listing and the seize: the next
                                // pass finds it a zombie (or gone).
                                Err(_) if tid == pid && pid != root && has_died(pid) => {
                                    seized.remove(&tid);
                                    died = true;
                                    break;
                                }
                                Err(e) => return Err(e),
                            }
                            tree.seized.push(tid);
                        }
                    }
                    if died {
                        continue;
                    }
                    let children = list_children(pid, &threads);
                    queue.extend(children.iter().rev().map(|&c| (c, pid)));
                    // Read again once stopped: the group or session may have changed.
                    read_stat(&format!("/proc/{pid}/stat"))?
                };
                tasks.push(TaskInfo {
                    pid,
                    ppid,
                    pgid: stat.pgid,
                    sid: stat.sid,
                    threads,
                    stop_signal: job_stopped.get(&pid).copied().filter(|_| zombie.is_none()),
                    zombie,
                });
            }
            if !found_new {
                tree.tasks = tasks;
                tracing::debug!(
                    root,
                    tasks = tree.tasks.len(),
                    threads = tree.seized.len(),
                    "tree frozen"
                );
                return Ok(tree);
            }
        }
    }

    /// Processes of the tree, root first, parents before their children.
    pub fn tasks(&self) -> &[TaskInfo] {
        &self.tasks
    }

    /// Releases every thread; the tree continues from where it was stopped.
    pub fn release(mut self) {
        self.detach_all();
    }

    /// SIGKILLs every process of the tree. The returned handle collects the tracees'
    /// exit reports (freeing a large address space takes a while; the tree is no longer
    /// frozen meanwhile, it is dying).
    pub fn kill(mut self) -> KilledTree {
        for task in &self.tasks {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(task.pid, libc::SIGKILL) };
        }
        self.done = true;
        KilledTree {
            seized: std::mem::take(&mut self.seized),
        }
    }

    fn detach_all(&mut self) {
        if self.done {
            return;
        }
        for &tid in &self.seized {
            if let Err(err) = ptrace::detach(tid) {
                tracing::debug!(tid, error = %err, "detach failed");
            }
        }
        self.done = true;
    }
}

/// A killed tree whose tracees still have to report their exit.
#[derive(Debug)]
pub struct KilledTree {
    seized: Vec<i32>,
}

impl KilledTree {
    /// Waits for every tracee's final report.
    pub fn wait(mut self) {
        self.wait_all();
    }

    fn wait_all(&mut self) {
        // A killed thread-group leader reports its exit only after every other thread
        // of its group has been reaped, and traced threads are reaped by their tracer:
        // collect threads before leaders (each leader was seized before its threads).
        for tid in self.seized.drain(..).rev() {
            let _ = ptrace::wait(tid);
        }
    }
}

impl Drop for KilledTree {
    fn drop(&mut self) {
        self.wait_all();
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Seizes and interrupts `tid`; returns the signal of its stop (`SIGTRAP` for a running
/// task, the stop signal for one in a group stop).
fn seize_one(pid: i32, tid: i32) -> Result<i32, FreezeError> {
    let wrap = |source| FreezeError::Seize { pid, tid, source };
    ptrace::seize(tid).map_err(wrap)?;
    ptrace::interrupt(tid).map_err(wrap)?;
    ptrace::wait_interrupt_stop(tid).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 999 \
                    0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.comm, "a (b) c");
        assert_eq!((st.state, st.ppid, st.pgid, st.sid), ('S', 1, 42, 42));
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_time, 999);
        assert_eq!(st.exit_signal, 17);
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert!(parse_stat("1 (x) S 0").is_none());
    }
}
