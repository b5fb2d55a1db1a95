//! Kernel object ids (`ids-PID.img`, `inventory.root_ids`).
//!
//! CRIU numbers shared kernel objects (mm, fd table, fs, signal handlers, namespaces)
//! with small integers so that tasks sharing one object carry the same id; `files_id`
//! also names `fdinfo-<files_id>.img`. Id 1 of each kind is the dumper's own object,
//! as in CRIU (its ids go into the inventory as `root_ids`, which is how a restorer
//! learns which namespaces were not dumped). Sharing is decided with `kcmp(2)` for
//! task objects and by inode for namespaces.

use std::collections::HashMap;

use cryo_format::schema::TaskKobjIdsEntry;

const KCMP_VM: i32 = 1;
const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;
const KCMP_SIGHAND: i32 = 4;

/// Namespace kinds in the order CRIU numbers them.
const NAMESPACES: [&str; 8] = ["pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"];

/// Assigns ids to the kernel objects of the dumper and of each dumped process.
#[derive(Debug)]
pub struct IdTable {
    /// Per kind: (representative pid, id).
    kinds: [Vec<(i32, u32)>; 4],
    ns: HashMap<u64, u32>,
    next_ns: u32,
    root: TaskKobjIdsEntry,
}

fn kcmp(pid1: i32, pid2: i32, kind: i32) -> bool {
    // SAFETY: kcmp takes no pointers for these kinds.
    unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0, 0) == 0 }
}

fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = link.to_str()?;
    s.rsplit_once('[')?.1.trim_end_matches(']').parse().ok()
}

impl IdTable {
    /// Starts the table with the dumper's own objects as id 1 (and namespace ids 1..).
    pub fn new() -> IdTable {
        let me = std::process::id() as i32;
        let mut t = IdTable {
            kinds: Default::default(),
            ns: HashMap::new(),
            next_ns: 1,
            root: TaskKobjIdsEntry::default(),
        };
        t.root = t.ids_of(me);
        t
    }

    /// The dumper's own ids, for `inventory.root_ids`.
    pub fn root_ids(&self) -> TaskKobjIdsEntry {
        self.root
    }

    fn task_id(&mut self, idx: usize, pid: i32, kind: i32) -> u32 {
        let known = &mut self.kinds[idx];
        if let Some(&(_, id)) = known.iter().find(|(p, _)| *p == pid || kcmp(*p, pid, kind)) {
            return id;
        }
        let id = known.len() as u32 + 1;
        known.push((pid, id));
        id
    }

    fn ns_id(&mut self, pid: i32, kind: &str) -> Option<u32> {
        let ino = ns_inode(pid, kind)?;
        let next = &mut self.next_ns;
        Some(*self.ns.entry(ino).or_insert_with(|| {
            let id = *next;
            *next += 1;
            id
        }))
    }

    /// Ids of process `pid`.
    pub fn ids_of(&mut self, pid: i32) -> TaskKobjIdsEntry {
        let mut ns = NAMESPACES.map(|k| self.ns_id(pid, k));
        // CRIU numbers pid namespaces separately from the others.
        if self.root.pid_ns_id.is_none() && ns[0].is_some() {
            ns[0] = Some(1);
        }
        TaskKobjIdsEntry {
            vm_id: self.task_id(0, pid, KCMP_VM),
            files_id: self.task_id(1, pid, KCMP_FILES),
            fs_id: self.task_id(2, pid, KCMP_FS),
            sighand_id: self.task_id(3, pid, KCMP_SIGHAND),
            pid_ns_id: ns[0],
            net_ns_id: ns[1],
            ipc_ns_id: ns[2],
            uts_ns_id: ns[3],
            time_ns_id: ns[4],
            mnt_ns_id: ns[5],
            user_ns_id: ns[6],
            cgroup_ns_id: ns[7],
        }
    }
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dumper_is_id_one_and_a_child_with_its_own_mm_is_two() {
        let mut t = IdTable::new();
        let root = t.root_ids();
        assert_eq!(
            (root.vm_id, root.files_id, root.fs_id, root.sighand_id),
            (1, 1, 1, 1)
        );
        assert!(root.mnt_ns_id.is_some());

        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let ids = t.ids_of(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(ids.vm_id, 2);
        assert_eq!(ids.files_id, 2);
        assert_eq!(
            ids.mnt_ns_id, root.mnt_ns_id,
            "same mount namespace, same id"
        );
    }
}
