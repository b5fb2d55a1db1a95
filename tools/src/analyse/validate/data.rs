//! Layer 2b: images whose entries point at other images' entries by id — pipe and FIFO
//! contents at the pipes of `files.img`, thread seccomp filters at `seccomp.img`.

use std::collections::HashSet;

use cryo_format::magic::well_known;
use cryo_format::schema::{FileEntry, PipeDataEntry, SeccompEntry};

use super::tree::TreeFacts;
use super::{Checker, Rule};

pub(crate) fn check_data(checker: &mut Checker, tree: &TreeFacts) {
    check_pipe_data(checker);
    check_seccomp(checker, tree);
}

/// Every `pipes-data.img` / `fifo-data.img` entry holds the bytes of a pipe that some
/// `files.img` entry opens (`pipe.pipe_id`, `fifo.pipe_id`).
fn check_pipe_data(checker: &mut Checker) {
    if !checker.exists("pipes-data.img") && !checker.exists("fifo-data.img") {
        return;
    }
    // files.img faults are reported by the tree layer; without it nothing can be matched.
    let Some(files) = checker.read::<FileEntry>("files.img", well_known::files(), false) else {
        return;
    };
    let pipes: HashSet<u32> = files
        .iter()
        .filter_map(|(_, file)| file.pipe.as_ref().map(|pipe| pipe.pipe_id))
        .collect();
    let fifos: HashSet<u32> = files
        .iter()
        .filter_map(|(_, file)| file.fifo.as_ref().map(|fifo| fifo.pipe_id))
        .collect();

    for (file, known, what, data_magic) in [
        ("pipes-data.img", &pipes, "pipe", well_known::pipes_data()),
        ("fifo-data.img", &fifos, "FIFO", well_known::fifo_data()),
    ] {
        let Some(entries) = checker.read::<PipeDataEntry>(file, data_magic, false) else {
            continue;
        };
        for (index, entry) in entries {
            if !known.contains(&entry.pipe_id) {
                let message = format!(
                    "holds data of {what} {} which no files.img entry opens",
                    entry.pipe_id
                );
                checker.report(Rule::FileRef, file, Some(index), Some("pipe_id"), message);
            }
        }
    }
}

/// A thread in seccomp filter mode names a filter of `seccomp.img` by index.
fn check_seccomp(checker: &mut Checker, tree: &TreeFacts) {
    if tree.seccomp_refs.is_empty() {
        return;
    }
    let filters = match checker.read::<SeccompEntry>("seccomp.img", well_known::seccomp(), true) {
        Some(entries) => entries
            .first()
            .map_or(0, |(_, entry)| entry.seccomp_filters.len()),
        None => return,
    };
    for (file, index) in &tree.seccomp_refs {
        if *index as usize >= filters {
            let message =
                format!("seccomp filter {index} does not exist (seccomp.img holds {filters})");
            checker.report(
                Rule::FileRef,
                file,
                Some(0),
                Some("thread_core.seccomp_filter"),
                message,
            );
        }
    }
}
