//! Layer 2: inventory, process tree, per-thread and per-process images, file references.

use std::collections::{BTreeMap, HashMap, HashSet};

use cryo_format::magic::well_known;
use cryo_format::schema::{
    CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, PstreeEntry, TaskKobjIdsEntry,
};

use super::{Checker, Rule};

/// The only `img_version` cryo reads (v1.1).
const IMG_VERSION: u32 = 2;
/// `core_entry.mtype` of x86-64.
const MARCH_X86_64: i32 = 1;
/// Task states (`task_core_entry.task_state`) whose memory was not dumped.
const STATE_DEAD: u32 = 2;
const STATE_ZOMBIE: u32 = 6;
/// `seccomp_mode.filter`.
const SECCOMP_MODE_FILTER: i32 = 2;
/// `fd_types.REG`.
const FD_REG: i32 = 1;

/// What later layers need to know about the tree.
#[derive(Debug, Default)]
pub(crate) struct TreeFacts {
    /// Processes whose memory images must exist, by pid.
    pub with_memory: Vec<u32>,
    /// Type of every `files.img` id, when `files.img` could be read.
    pub files: Option<HashMap<u32, i32>>,
    /// Seccomp filter indices named by thread cores: (core image, index).
    pub seccomp_refs: Vec<(String, u32)>,
}

pub(crate) fn check_tree(checker: &mut Checker) -> TreeFacts {
    check_inventory(checker);
    let mut facts = TreeFacts {
        files: read_files(checker),
        ..TreeFacts::default()
    };

    let Some(tree) = checker.read::<PstreeEntry>("pstree.img", well_known::pstree(), true) else {
        return facts;
    };
    if tree.is_empty() && !checker.is_faulty("pstree.img", None) {
        checker.report(Rule::Pstree, "pstree.img", None, None, "holds no process");
    }
    check_pstree(checker, &tree);

    let mut thread_owner: BTreeMap<u32, u32> = BTreeMap::new();
    for (index, entry) in &tree {
        for &tid in &entry.threads {
            thread_owner.entry(tid).or_insert(entry.pid);
        }
        let state = check_cores(checker, *index, entry, &mut facts.seccomp_refs);
        if state != Some(STATE_DEAD) && state != Some(STATE_ZOMBIE) {
            check_process_images(checker, entry.pid, facts.files.as_ref());
            facts.with_memory.push(entry.pid);
        }
    }
    check_stray_cores(checker, &thread_owner);
    facts
}

fn check_inventory(checker: &mut Checker) {
    let file = "inventory.img";
    let Some(inventory) = checker.read_one::<InventoryEntry>(file, well_known::inventory()) else {
        return;
    };
    if inventory.img_version != IMG_VERSION {
        checker.report(
            Rule::Inventory,
            file,
            Some(0),
            Some("img_version"),
            format!(
                "image version {} is not v1.1 ({IMG_VERSION}), the only one cryo reads",
                inventory.img_version
            ),
        );
    }
    if inventory.fdinfo_per_id != Some(true) {
        checker.report(
            Rule::Inventory,
            file,
            Some(0),
            Some("fdinfo_per_id"),
            "fdinfo_per_id is not set: fdinfo images keyed by pid are too old to read",
        );
    }
}

fn read_files(checker: &mut Checker) -> Option<HashMap<u32, i32>> {
    let file = "files.img";
    let entries = checker.read::<FileEntry>(file, well_known::files(), false)?;
    let mut types = HashMap::new();
    for (index, entry) in entries {
        if types.insert(entry.id, entry.r#type).is_some() {
            checker.report(
                Rule::FileRef,
                file,
                Some(index),
                Some("id"),
                format!("file id {} is used by an earlier entry too", entry.id),
            );
        }
    }
    Some(types)
}

fn check_pstree(checker: &mut Checker, tree: &[(usize, PstreeEntry)]) {
    let file = "pstree.img";
    let pids: HashSet<u32> = tree.iter().map(|(_, entry)| entry.pid).collect();
    let mut seen_pids = HashSet::new();
    let mut seen_tids = HashSet::new();

    for (index, entry) in tree {
        let index = Some(*index);
        if !seen_pids.insert(entry.pid) {
            checker.report(
                Rule::Pstree,
                file,
                index,
                Some("pid"),
                format!("pid {} appears in an earlier entry too", entry.pid),
            );
        }
        match entry.threads.first() {
            None => checker.report(
                Rule::Pstree,
                file,
                index,
                Some("threads"),
                format!("process {} lists no thread", entry.pid),
            ),
            Some(&leader) if leader != entry.pid => checker.report(
                Rule::Pstree,
                file,
                index,
                Some("threads"),
                format!(
                    "the first thread {leader} is not the process {} itself (leader first)",
                    entry.pid
                ),
            ),
            Some(_) => {}
        }
        for (position, &tid) in entry.threads.iter().enumerate() {
            if !seen_tids.insert(tid) {
                checker.report(
                    Rule::Pstree,
                    file,
                    index,
                    Some(&format!("threads[{position}]")),
                    format!("tid {tid} is listed twice in the tree"),
                );
            }
        }
    }

    // One root (ppid 0, or a parent outside the dump); every other parent is in the tree.
    let roots: Vec<usize> = tree
        .iter()
        .filter(|(_, entry)| entry.ppid == 0 || !pids.contains(&entry.ppid))
        .map(|(index, _)| *index)
        .collect();
    if roots.len() > 1 {
        for (index, entry) in tree.iter().filter(|(index, _)| roots[1..].contains(index)) {
            checker.report(
                Rule::Pstree,
                file,
                Some(*index),
                Some("ppid"),
                format!(
                    "parent {} of process {} is not in the tree (entry {} is already the root)",
                    entry.ppid, entry.pid, roots[0]
                ),
            );
        }
    } else if roots.is_empty() && !tree.is_empty() {
        checker.report(
            Rule::Pstree,
            file,
            Some(tree[0].0),
            Some("ppid"),
            "no root: every parent is inside the tree, so the tree is a cycle",
        );
    }
}

/// Checks the core of every thread of `entry`; returns the leader's task state.
fn check_cores(
    checker: &mut Checker,
    index: usize,
    entry: &PstreeEntry,
    seccomp_refs: &mut Vec<(String, u32)>,
) -> Option<u32> {
    let mut state = None;
    for &tid in &entry.threads {
        let file = format!("core-{tid}.img");
        if !checker.exists(&file) {
            checker.report(
                Rule::MissingImage,
                &file,
                None,
                None,
                format!(
                    "thread {tid} of process {} (pstree.img entry {index}) has no core image",
                    entry.pid
                ),
            );
            continue;
        }
        let Some(core) = checker.read_one::<CoreEntry>(&file, well_known::core()) else {
            continue;
        };
        if core.mtype != MARCH_X86_64 {
            checker.report(
                Rule::Core,
                &file,
                Some(0),
                Some("mtype"),
                format!("architecture {} is not x86-64", core.mtype),
            );
        }
        if let Some(filter) = core
            .thread_core
            .as_ref()
            .filter(|tc| tc.seccomp_mode == Some(SECCOMP_MODE_FILTER))
            .and_then(|tc| tc.seccomp_filter)
        {
            seccomp_refs.push((file.clone(), filter));
        }
        if core.thread_info.is_none() {
            checker.report(
                Rule::Core,
                &file,
                Some(0),
                Some("thread_info"),
                "no x86 registers",
            );
        }
        if tid == entry.pid {
            match &core.tc {
                Some(tc) => state = Some(tc.task_state),
                None => checker.report(
                    Rule::Core,
                    &file,
                    Some(0),
                    Some("tc"),
                    format!("the leader of process {} has no task core", entry.pid),
                ),
            }
        }
    }
    state
}

/// `core-N.img` files whose N is no thread of the tree.
fn check_stray_cores(checker: &mut Checker, thread_owner: &BTreeMap<u32, u32>) {
    let Ok(listing) = std::fs::read_dir(&checker.dir) else {
        return;
    };
    let mut strays: Vec<String> = listing
        .flatten()
        .filter_map(|item| item.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix("core-")
                .and_then(|rest| rest.strip_suffix(".img"))
                .and_then(|tid| tid.parse::<u32>().ok())
                .is_some_and(|tid| !thread_owner.contains_key(&tid))
        })
        .collect();
    strays.sort();
    for name in strays {
        checker.report(
            Rule::Core,
            &name,
            None,
            None,
            "no thread of pstree.img has this tid",
        );
    }
}

fn check_process_images(checker: &mut Checker, pid: u32, files: Option<&HashMap<u32, i32>>) {
    for file in [format!("mm-{pid}.img"), format!("pagemap-{pid}.img")] {
        if !checker.exists(&file) {
            checker.report(
                Rule::MissingImage,
                &file,
                None,
                None,
                format!("process {pid} has no {file}"),
            );
        }
    }

    let ids_file = format!("ids-{pid}.img");
    if let Some(ids) = checker.read_one::<TaskKobjIdsEntry>(&ids_file, well_known::ids()) {
        check_fdinfo(checker, ids.files_id, files);
    }

    let fs_file = format!("fs-{pid}.img");
    if let (Some(fs), Some(files)) = (
        checker.read_one::<FsEntry>(&fs_file, well_known::fs()),
        files,
    ) {
        for (field, id) in [("cwd_id", fs.cwd_id), ("root_id", fs.root_id)] {
            check_file_id(checker, &fs_file, 0, field, id, Some(FD_REG), files);
        }
    }
}

fn check_fdinfo(checker: &mut Checker, files_id: u32, files: Option<&HashMap<u32, i32>>) {
    let file = format!("fdinfo-{files_id}.img");
    let Some(fds) = checker.read::<FdinfoEntry>(&file, well_known::fdinfo(), false) else {
        return;
    };
    let mut seen = HashSet::new();
    for (index, fd) in fds {
        if !seen.insert(fd.fd) {
            checker.report(
                Rule::FileRef,
                &file,
                Some(index),
                Some("fd"),
                format!("descriptor {} appears in an earlier entry too", fd.fd),
            );
        }
        if let Some(files) = files {
            check_file_id(checker, &file, index, "id", fd.id, Some(fd.r#type), files);
        }
    }
}

/// Checks that `id` names a `files.img` entry (of type `kind`, when given).
pub(crate) fn check_file_id(
    checker: &mut Checker,
    file: &str,
    index: usize,
    field: &str,
    id: u32,
    kind: Option<i32>,
    files: &HashMap<u32, i32>,
) {
    match files.get(&id) {
        None => checker.report(
            Rule::FileRef,
            file,
            Some(index),
            Some(field),
            format!("file id {id} is not in files.img"),
        ),
        Some(&found) if kind.is_some_and(|kind| kind != found) => checker.report(
            Rule::FileRef,
            file,
            Some(index),
            Some(field),
            format!(
                "file id {id} has type {found} in files.img, expected {}",
                kind.unwrap_or_default()
            ),
        ),
        Some(_) => {}
    }
}
