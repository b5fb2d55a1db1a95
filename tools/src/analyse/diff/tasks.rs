//! Matching processes, threads, VMAs, descriptors, registers and handlers of two sets.

use std::collections::{BTreeMap, BTreeSet};

use indicatif::ProgressBar;

use super::{
    DiffReport, FdChange, FdChanges, FdMove, FdRef, JSON_VERSION, Membership, RegisterChange,
    Reprotected, Resized, SigActionChange, SigActionRef, StateChange, TaskDiff, TaskPages,
    ThreadRegisters, VmaChanges, VmaRef, compare_pages,
};
use crate::analyse::snapshot::{FdView, Registers, SigAction, Snapshot, TaskState, TaskView};
use crate::analyse::vma::Vma;

/// Compares two sets completely (`verify`: see `compare_pages`).
pub fn compare_tasks(
    a: &Snapshot<'_>,
    b: &Snapshot<'_>,
    progress: &ProgressBar,
    verify: bool,
) -> DiffReport {
    let processes = membership(a.tasks.keys(), b.tasks.keys());
    let mut report = DiffReport {
        version: JSON_VERSION,
        a: a.dir.display().to_string(),
        b: b.dir.display().to_string(),
        changed: !processes.is_empty(),
        processes,
        pages: Default::default(),
        tasks: Vec::new(),
    };

    for (pid, task_a) in &a.tasks {
        let Some(task_b) = b.tasks.get(pid) else {
            continue;
        };
        let task = compare_task(task_a, task_b, progress, verify);
        report.changed |= task.is_changed();
        report.pages.add(&task.pages.counts);
        report.tasks.push(task);
    }
    report
}

fn compare_task(
    a: &TaskView<'_>,
    b: &TaskView<'_>,
    progress: &ProgressBar,
    verify: bool,
) -> TaskDiff {
    let (rows, counts) = compare_pages(&a.memory, &b.memory, progress, verify);
    TaskDiff {
        pid: a.pid,
        comm: a.comm.clone(),
        comm_b: (a.comm != b.comm).then(|| b.comm.clone()),
        threads: membership(a.threads.iter(), b.threads.iter()),
        vmas: compare_vmas(&a.memory.vmas, &b.memory.vmas),
        fds: compare_fds(&a.fds, &b.fds),
        registers: compare_registers(&a.registers, &b.registers),
        sigactions: compare_sigactions(&a.sigactions, &b.sigactions),
        state: compare_state(&a.state, &b.state),
        pages: TaskPages { counts, vmas: rows },
    }
}

/// Ids present in `b` only (added) and in `a` only (removed).
fn membership<'x>(
    a: impl Iterator<Item = &'x u32>,
    b: impl Iterator<Item = &'x u32>,
) -> Membership {
    let a: BTreeSet<u32> = a.copied().collect();
    let b: BTreeSet<u32> = b.copied().collect();
    Membership {
        added: b.difference(&a).copied().collect(),
        removed: a.difference(&b).copied().collect(),
    }
}

fn vma_ref(vma: &Vma) -> VmaRef {
    VmaRef {
        start: vma.start,
        end: vma.end,
        prot: vma.prot_string(),
        kind: vma.kind.to_string(),
        path: vma.path.clone(),
    }
}

/// VMAs are matched by start address: a VMA that grew or shrank keeps its start.
fn compare_vmas(a: &[Vma], b: &[Vma]) -> VmaChanges {
    let by_start_a: BTreeMap<u64, &Vma> = a.iter().map(|vma| (vma.start, vma)).collect();
    let by_start_b: BTreeMap<u64, &Vma> = b.iter().map(|vma| (vma.start, vma)).collect();
    let mut changes = VmaChanges::default();

    for (start, vma_a) in &by_start_a {
        let Some(vma_b) = by_start_b.get(start) else {
            changes.removed.push(vma_ref(vma_a));
            continue;
        };
        if vma_a.end != vma_b.end {
            changes.resized.push(Resized {
                start: *start,
                end_a: vma_a.end,
                end_b: vma_b.end,
            });
        }
        if vma_a.prot != vma_b.prot {
            changes.reprotected.push(Reprotected {
                start: *start,
                end: vma_b.end,
                prot_a: vma_a.prot_string(),
                prot_b: vma_b.prot_string(),
            });
        }
    }
    changes.added = by_start_b
        .iter()
        .filter(|(start, _)| !by_start_a.contains_key(start))
        .map(|(_, vma)| vma_ref(vma))
        .collect();
    changes
}

/// How one descriptor reads in a change line: its description plus position and flags.
fn fd_state(fd: &FdView) -> String {
    let mut text = fd.desc.clone();
    if let Some(pos) = fd.pos {
        text.push_str(&format!(" pos={pos}"));
    }
    if let Some(flags) = fd.open_flags {
        text.push_str(&format!(" flags={flags:#o}"));
    }
    text
}

/// Descriptors are matched by number; a description closed at one number and opened at
/// another is reported as moved (a `dup2` and `close`), not as a close and an open.
fn compare_fds(a: &BTreeMap<u32, FdView>, b: &BTreeMap<u32, FdView>) -> FdChanges {
    let mut changes = FdChanges::default();
    let mut closed: Vec<(u32, &FdView)> = Vec::new();
    let mut opened: Vec<(u32, &FdView)> = Vec::new();

    for (fd, view_a) in a {
        match b.get(fd) {
            None => closed.push((*fd, view_a)),
            Some(view_b) if view_a != view_b => {
                let (state_a, state_b) = (fd_state(view_a), fd_state(view_b));
                if state_a != state_b {
                    changes.changed.push(FdChange {
                        fd: *fd,
                        a: state_a,
                        b: state_b,
                    });
                }
            }
            Some(_) => {}
        }
    }
    opened.extend(
        b.iter()
            .filter(|(fd, _)| !a.contains_key(fd))
            .map(|(fd, view)| (*fd, view)),
    );

    for (from, view_a) in closed {
        let matched = opened
            .iter()
            .position(|(_, view_b)| view_b.desc == view_a.desc);
        match matched {
            Some(index) => {
                let (to, _) = opened.remove(index);
                changes.moved.push(FdMove {
                    from,
                    to,
                    desc: view_a.desc.clone(),
                });
            }
            None => changes.closed.push(FdRef {
                fd: from,
                desc: view_a.desc.clone(),
            }),
        }
    }
    changes.opened = opened
        .into_iter()
        .map(|(fd, view)| FdRef {
            fd,
            desc: view.desc.clone(),
        })
        .collect();
    changes
}

fn compare_registers(
    a: &BTreeMap<u32, Registers>,
    b: &BTreeMap<u32, Registers>,
) -> Vec<ThreadRegisters> {
    let mut threads = Vec::new();
    for (tid, regs_a) in a {
        let Some(regs_b) = b.get(tid) else { continue };
        let changes: Vec<RegisterChange> = regs_a
            .iter()
            .zip(regs_b)
            .filter(|((_, x), (_, y))| x != y)
            .map(|(&(name, x), &(_, y))| RegisterChange { name, a: x, b: y })
            .collect();
        if !changes.is_empty() {
            threads.push(ThreadRegisters { tid: *tid, changes });
        }
    }
    threads
}

/// Values matched by name; a value present on one side only counts as 0 on the other.
fn compare_state(a: &TaskState, b: &TaskState) -> Vec<StateChange> {
    let a_by_name: BTreeMap<&str, u64> = a.iter().map(|(name, v)| (name.as_str(), *v)).collect();
    let b_by_name: BTreeMap<&str, u64> = b.iter().map(|(name, v)| (name.as_str(), *v)).collect();
    let names: BTreeSet<&str> = a_by_name.keys().chain(b_by_name.keys()).copied().collect();
    let mut changes: Vec<StateChange> = names
        .into_iter()
        .filter_map(|name| {
            let x = a_by_name.get(name).copied().unwrap_or(0);
            let y = b_by_name.get(name).copied().unwrap_or(0);
            (x != y).then(|| StateChange {
                name: name.to_owned(),
                a: x,
                b: y,
            })
        })
        .collect();
    // Keep the order of the images (state, signals, limits, creds), not alphabetical.
    let position = |name: &str| a.iter().chain(b).position(|(n, _)| n == name);
    changes.sort_by_key(|change| position(&change.name));
    changes
}

fn sigaction_ref(sa: &SigAction) -> SigActionRef {
    SigActionRef {
        handler: sa.handler,
        flags: sa.flags,
        restorer: sa.restorer,
        mask: sa.mask,
    }
}

/// Handlers are stored one per signal, signal 1 first.
fn compare_sigactions(a: &[SigAction], b: &[SigAction]) -> Vec<SigActionChange> {
    let empty = SigAction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    (0..a.len().max(b.len()))
        .filter_map(|index| {
            let x = a.get(index).unwrap_or(&empty);
            let y = b.get(index).unwrap_or(&empty);
            (x != y).then(|| SigActionChange {
                signal: index as u32 + 1,
                a: sigaction_ref(x),
                b: sigaction_ref(y),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(desc: &str, pos: Option<u64>) -> FdView {
        FdView {
            desc: desc.to_owned(),
            pos,
            open_flags: None,
        }
    }

    #[test]
    fn fds_report_open_close_move_and_position_change() {
        let a = BTreeMap::from([
            (0, reg("/dev/null", None)),
            (3, reg("/tmp/log", Some(10))),
            (4, reg("pipe[77]", None)),
            (5, reg("/etc/passwd", None)),
        ]);
        let b = BTreeMap::from([
            (0, reg("/dev/null", None)),
            (3, reg("/tmp/log", Some(20))),
            (7, reg("pipe[77]", None)),
            (8, reg("/etc/hosts", None)),
        ]);
        let changes = compare_fds(&a, &b);
        assert_eq!(changes.changed.len(), 1);
        assert_eq!(changes.changed[0].a, "/tmp/log pos=10");
        assert_eq!(changes.changed[0].b, "/tmp/log pos=20");
        assert_eq!(changes.moved.len(), 1);
        assert_eq!((changes.moved[0].from, changes.moved[0].to), (4, 7));
        assert_eq!(changes.closed.len(), 1);
        assert_eq!(changes.closed[0].desc, "/etc/passwd");
        assert_eq!(changes.opened.len(), 1);
        assert_eq!(changes.opened[0].fd, 8);
    }
}
