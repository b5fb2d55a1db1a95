//! The human-readable rendering of a diff: a summary first, then one paragraph per process.

use std::fmt::Write;

use super::{DiffReport, PageCounts, TaskDiff};
use crate::analyse::memory::PAGE_SIZE;

fn counts_line(counts: &PageCounts) -> String {
    format!(
        "{} identical, {} changed, {} only in A, {} only in B",
        counts.identical, counts.changed, counts.only_a, counts.only_b
    )
}

fn mib(pages: u64) -> f64 {
    (pages * PAGE_SIZE as u64) as f64 / f64::from(1 << 20)
}

/// Renders `report` for a person.
pub fn render_text(report: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {}\nB: {}", report.a, report.b);
    if !report.changed {
        out.push_str("no change\n");
        return out;
    }

    for pid in &report.processes.added {
        let _ = writeln!(out, "process {pid}: only in B (added)");
    }
    for pid in &report.processes.removed {
        let _ = writeln!(out, "process {pid}: only in A (gone)");
    }
    let _ = writeln!(
        out,
        "pages: {} ({:.1} MiB changed)",
        counts_line(&report.pages),
        mib(report.pages.changed)
    );

    for task in &report.tasks {
        render_task(&mut out, task);
    }
    out
}

fn render_task(out: &mut String, task: &TaskDiff) {
    if !task.is_changed() {
        let _ = writeln!(out, "\nprocess {} ({}): no change", task.pid, task.comm);
        return;
    }
    let _ = writeln!(out, "\nprocess {} ({}):", task.pid, task.comm);
    if let Some(comm) = &task.comm_b {
        let _ = writeln!(out, "  comm: {} -> {comm}", task.comm);
    }
    for tid in &task.threads.added {
        let _ = writeln!(out, "  thread {tid} added");
    }
    for tid in &task.threads.removed {
        let _ = writeln!(out, "  thread {tid} gone");
    }

    let vmas = &task.vmas;
    for vma in &vmas.added {
        let _ = writeln!(
            out,
            "  vma + {:#x}-{:#x} {} {}",
            vma.start,
            vma.end,
            vma.prot,
            vma.path.as_deref().unwrap_or(&vma.kind)
        );
    }
    for vma in &vmas.removed {
        let _ = writeln!(
            out,
            "  vma - {:#x}-{:#x} {} {}",
            vma.start,
            vma.end,
            vma.prot,
            vma.path.as_deref().unwrap_or(&vma.kind)
        );
    }
    for vma in &vmas.resized {
        let _ = writeln!(
            out,
            "  vma ~ {:#x}: end {:#x} -> {:#x}",
            vma.start, vma.end_a, vma.end_b
        );
    }
    for vma in &vmas.reprotected {
        let _ = writeln!(
            out,
            "  vma ~ {:#x}-{:#x}: prot {} -> {}",
            vma.start, vma.end, vma.prot_a, vma.prot_b
        );
    }

    let fds = &task.fds;
    for fd in &fds.opened {
        let _ = writeln!(out, "  fd {} opened: {}", fd.fd, fd.desc);
    }
    for fd in &fds.closed {
        let _ = writeln!(out, "  fd {} closed: {}", fd.fd, fd.desc);
    }
    for fd in &fds.moved {
        let _ = writeln!(out, "  fd {} moved to {}: {}", fd.from, fd.to, fd.desc);
    }
    for fd in &fds.changed {
        let _ = writeln!(out, "  fd {}: {} -> {}", fd.fd, fd.a, fd.b);
    }

    for thread in &task.registers {
        let changes: Vec<String> = thread
            .changes
            .iter()
            .map(|change| format!("{} {:#x}->{:#x}", change.name, change.a, change.b))
            .collect();
        let _ = writeln!(out, "  registers of {}: {}", thread.tid, changes.join(", "));
    }
    for change in &task.state {
        let _ = writeln!(out, "  {}: {:#x} -> {:#x}", change.name, change.a, change.b);
    }
    for sa in &task.sigactions {
        let _ = writeln!(
            out,
            "  signal {} handler: {:#x} flags {:#x} -> {:#x} flags {:#x}",
            sa.signal, sa.a.handler, sa.a.flags, sa.b.handler, sa.b.flags
        );
    }

    let _ = writeln!(out, "  pages: {}", counts_line(&task.pages.counts));
    for row in task.pages.vmas.iter().filter(|row| row.counts.differs()) {
        let name = row.path.as_deref().unwrap_or(&row.kind);
        let _ = writeln!(
            out,
            "    {:#x}-{:#x} {name}: {}",
            row.start,
            row.end,
            counts_line(&row.counts)
        );
    }
    let unchanged = task
        .pages
        .vmas
        .iter()
        .filter(|row| !row.counts.differs())
        .count();
    if unchanged > 0 {
        let _ = writeln!(out, "    ({unchanged} more VMAs with identical pages)");
    }
}
