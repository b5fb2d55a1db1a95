//! Layer 4: the `parent` chain of pre-dumps.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cryo_format::magic::well_known;
use cryo_format::schema::PagemapEntry;

use super::pagemap::{MapEntry, read_entries};
use super::tree::TreeFacts;
use super::{Checker, Rule};
use cryo_format::memory::MAX_PARENT_DEPTH;
use cryo_format::pagemap::PAGE_SIZE;

pub(crate) fn check_parent(checker: &mut Checker, tree: &TreeFacts) {
    let chain = resolve_chain(checker);
    for dir in chain.iter().flatten() {
        check_parent_pages(checker, dir, &tree.with_memory);
    }

    for &pid in &tree.with_memory {
        let file = format!("pagemap-{pid}.img");
        if !checker.exists(&file) {
            continue;
        }
        let Some(entries) = checker.read::<PagemapEntry>(&file, well_known::pagemap(), true) else {
            continue;
        };
        for (index, raw) in entries.into_iter().filter(|(index, _)| *index > 0) {
            let entry = MapEntry::from_entry(index, &raw);
            if !entry.in_parent() {
                continue;
            }
            let Some(end) = entry.end() else {
                continue; // reported by the memory layer
            };
            let Some(chain) = chain.as_deref().filter(|chain| !chain.is_empty()) else {
                checker.report(
                    Rule::Parent,
                    &file,
                    Some(index),
                    Some("flags"),
                    "pages are marked PE_PARENT but the set has no usable parent link",
                );
                break;
            };
            if let Some((dir, missing)) = first_missing(chain, pid, entry.vaddr, end) {
                let message = format!(
                    "pages {:#x}-{end:#x} are marked PE_PARENT, but {} holds no page at {missing:#x}",
                    entry.vaddr,
                    dir.display()
                );
                checker.report(Rule::Parent, &file, Some(index), Some("flags"), message);
            }
        }
    }
}

/// Checks that each pages image of a parent is as long as its pagemap says (a pre-dump holds
/// only pagemaps and pages, so this is all there is to check in it).
fn check_parent_pages(checker: &mut Checker, dir: &Path, pids: &[u32]) {
    for pid in pids {
        let pagemap = dir.join(format!("pagemap-{pid}.img"));
        let label = |path: &Path| {
            path.strip_prefix(&checker.dir)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        if !pagemap.exists() {
            continue; // an entry that needs it is reported by first_missing
        }
        let Some((pages_id, entries)) = read_entries(&pagemap) else {
            let message = "cannot be read as a pagemap image";
            checker.report(Rule::Parent, &label(&pagemap), None, None, message);
            continue;
        };
        let present: u64 = entries
            .iter()
            .filter(|entry| entry.is_present())
            .map(|entry| entry.nr_pages)
            .fold(0, u64::saturating_add);
        let pages = dir.join(format!("pages-{pages_id}.img"));
        let actual = std::fs::metadata(&pages).map_or(0, |meta| meta.len());
        let expected = present.saturating_mul(PAGE_SIZE);
        if actual != expected {
            let message = format!(
                "is {actual} bytes, but {} accounts for {present} present pages ({expected} bytes)",
                label(&pagemap)
            );
            checker.report(Rule::Parent, &label(&pages), None, None, message);
        }
    }
}

/// Follows `parent` links; returns the parent directories in order (empty without a link), or
/// `None` after reporting a broken or looping chain.
fn resolve_chain(checker: &mut Checker) -> Option<Vec<PathBuf>> {
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut dir = checker.dir.clone();
    if let Ok(canonical) = dir.canonicalize() {
        seen.insert(canonical);
    }

    loop {
        let link = dir.join("parent");
        if link.symlink_metadata().is_err() {
            return Some(chain);
        }
        let label = link.display().to_string();
        let file = if chain.is_empty() {
            "parent".to_owned()
        } else {
            label.clone()
        };
        let target = std::fs::read_link(&link)
            .map(|target| target.display().to_string())
            .unwrap_or_else(|_| "(not a symlink)".to_owned());

        let canonical = match link.canonicalize() {
            Ok(canonical) if canonical.is_dir() => canonical,
            Ok(_) | Err(_) => {
                let message = format!("points to {target}, which is not an image directory");
                checker.report(Rule::Parent, &file, None, None, message);
                return None;
            }
        };
        if !seen.insert(canonical.clone()) {
            let message = format!(
                "points to {target}, which loops back to {} already in the chain",
                canonical.display()
            );
            checker.report(Rule::Parent, &file, None, None, message);
            return None;
        }
        if chain.len() >= MAX_PARENT_DEPTH {
            let message = format!("the chain is longer than {MAX_PARENT_DEPTH} links");
            checker.report(Rule::Parent, &file, None, None, message);
            return None;
        }
        chain.push(link.clone());
        dir = link;
    }
}

/// The first address of `start..end` that the chain does not hold for `pid`, with the
/// directory that should have held it.
fn first_missing(chain: &[PathBuf], pid: u32, start: u64, end: u64) -> Option<(PathBuf, u64)> {
    let (dir, rest) = chain.split_first()?;
    let Some((_, entries)) = read_entries(&dir.join(format!("pagemap-{pid}.img"))) else {
        return Some((dir.clone(), start));
    };
    missing_in(&entries, dir, rest, pid, start, end)
}

fn missing_in(
    entries: &[MapEntry],
    dir: &Path,
    rest: &[PathBuf],
    pid: u32,
    start: u64,
    end: u64,
) -> Option<(PathBuf, u64)> {
    let mut cursor = start;
    let mut entries: Vec<&MapEntry> = entries.iter().collect();
    entries.sort_by_key(|entry| entry.vaddr);
    for entry in entries {
        let Some(entry_end) = entry.end() else {
            continue;
        };
        if entry_end <= cursor {
            continue;
        }
        if entry.vaddr >= end {
            break;
        }
        if entry.vaddr > cursor {
            return Some((dir.to_path_buf(), cursor));
        }
        let to = entry_end.min(end);
        if entry.in_parent()
            && let Some(missing) = first_missing(rest, pid, cursor, to)
        {
            return Some(missing);
        }
        cursor = to;
        if cursor >= end {
            return None;
        }
    }
    (cursor < end).then(|| (dir.to_path_buf(), cursor))
}
