//! `imgtool diff A B`: what changed between two image sets of the same process tree.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::analyse::diff::{compare_tasks, render_text};
use crate::analyse::load::LoadedSet;
use crate::analyse::memory::PAGE_SIZE;
use crate::analyse::progress::bytes_bar;

/// Compare two image sets: processes, threads, VMAs, fds, registers, signals, limits, pages.
///
/// Pages are compared by content (XXH3-128 of every page, hashed in parallel; --verify also
/// compares the bytes of pages whose digests match), following `parent` chains, and counted
/// per VMA as identical, changed, only in A, only in B.
///
/// With --json the output is a stable document (version 1):
/// {"version", "a", "b", "changed", "processes": {"added", "removed"},
///  "pages": {"identical", "changed", "only_a", "only_b"},
///  "tasks": [{"pid", "comm", "comm_b"?, "threads": {"added", "removed"},
///    "vmas": {"added", "removed", "resized", "reprotected"},
///    "fds": {"opened", "closed", "moved", "changed"},
///    "registers": [{"tid", "changes": [{"name", "a", "b"}]}],
///    "sigactions": [{"signal", "a", "b"}],
///    "state": [{"name", "a", "b"}],   (task_state, blk_sigset, rlimit_*, creds.*)
///    "pages": {"identical", "changed", "only_a", "only_b",
///              "vmas": [{"start", "end", "kind", "path"?, <the four counts>}]}}]}
/// Addresses and register values are "0x…" strings; "changed" says whether anything differs.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DiffArgs {
    /// The earlier image set.
    pub a: PathBuf,
    /// The later image set.
    pub b: PathBuf,
    /// Print the stable JSON document instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Confirm every digest match byte for byte (the images are untrusted: a crafted page
    /// could collide with XXH3).
    #[arg(long)]
    pub verify: bool,
}

/// Runs the diff and prints it.
pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    let set_a = LoadedSet::open(&args.a)
        .with_context(|| format!("cannot open image set {}", args.a.display()))?;
    let set_b = LoadedSet::open(&args.b)
        .with_context(|| format!("cannot open image set {}", args.b.display()))?;
    let snapshot_a = set_a
        .snapshot()
        .with_context(|| format!("cannot load image set {}", args.a.display()))?;
    let snapshot_b = set_b
        .snapshot()
        .with_context(|| format!("cannot load image set {}", args.b.display()))?;

    let total_pages: u64 = [&snapshot_a, &snapshot_b]
        .iter()
        .flat_map(|snapshot| snapshot.tasks.values())
        .flat_map(|task| task.memory.runs.iter())
        .filter(|run| run.bytes.is_some())
        .map(|run| run.nr_pages)
        .sum();
    let progress = bytes_bar(total_pages * PAGE_SIZE as u64, "hashing");
    let report = compare_tasks(&snapshot_a, &snapshot_b, &progress, args.verify);
    progress.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}
