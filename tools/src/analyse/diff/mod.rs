//! `imgtool diff`: what changed between two image sets of the same process tree.
//!
//! The comparison is made in two layers. The *state* layer (`tasks`) matches processes by pid
//! and threads by tid, then compares VMAs (by start address), descriptors (by number),
//! registers and signal handlers. The *memory* layer (`pages`) hashes every dumped page of both
//! sets in parallel (XXH3-128, see `digest`) and joins the two digest lists by address, counting per VMA the pages that
//! are identical, changed, or dumped on one side only.
//!
//! # JSON output (`--json`), version 1
//!
//! The document is stable: keys are only ever added, never renamed or removed, and a change of
//! meaning bumps `version`. Addresses are hex strings (`"0x7f2c14000000"`), counts are numbers.
//!
//! ```text
//! {
//!   "version": 1,
//!   "a": DIR, "b": DIR,
//!   "changed": bool,                      // anything at all differs
//!   "processes": { "added": [PID], "removed": [PID] },
//!   "pages": { "identical": N, "changed": N, "only_a": N, "only_b": N },   // whole tree
//!   "tasks": [ {                          // processes present in both sets, by pid
//!     "pid": PID, "comm": STR,
//!     "comm_b": STR?,                     // only when the command name changed
//!     "threads": { "added": [TID], "removed": [TID] },
//!     "vmas": {
//!       "added": [VMA], "removed": [VMA],
//!       "resized": [ { "start": HEX, "end_a": HEX, "end_b": HEX } ],
//!       "reprotected": [ { "start": HEX, "end": HEX, "prot_a": "rw-", "prot_b": "r--" } ]
//!     },
//!     "fds": {
//!       "opened": [ { "fd": N, "desc": STR } ], "closed": [ { "fd": N, "desc": STR } ],
//!       "moved": [ { "from": N, "to": N, "desc": STR } ],
//!       "changed": [ { "fd": N, "a": STR, "b": STR } ]  // retargeted, position or flags
//!     },
//!     "registers": [ { "tid": TID, "changes": [ { "name": "ip", "a": HEX, "b": HEX } ] } ],
//!     "sigactions": [ { "signal": N, "a": SA, "b": SA } ],
//!     "state": [ { "name": "blk_sigset", "a": HEX, "b": HEX } ],  // task_state, exit_code,
//!              // personality, blk_sigset, rlimit_<name>.cur/.max, creds.<uid|gid|...>
//!     "pages": { "identical": N, "changed": N, "only_a": N, "only_b": N,
//!                "vmas": [ { "start": HEX, "end": HEX, "kind": STR, "path": STR?,
//!                            "identical": N, "changed": N, "only_a": N, "only_b": N } ] }
//!   } ]
//! }
//! ```
//!
//! `VMA` is `{ "start", "end", "prot", "kind", "path"? }`; `SA` is
//! `{ "handler", "flags", "restorer", "mask" }` (hex). A page is *identical* when both sets
//! hold it with the same content (wherever in a `parent` chain it is stored), *changed* when
//! both hold it with different content, *only_a*/*only_b* when one set has no bytes for it.
//! Per-VMA page rows are listed for every VMA that has dumped pages in either set (VMAs of B
//! first, then VMAs only in A); pages outside every VMA are counted in one last row of kind
//! `unmapped` with `start` and `end` 0. A pre-dump (no `pstree.img`, no `mm-PID.img`) has no
//! VMAs: its processes are those with a pagemap, and all their pages are in that row.

mod pages;
mod render;
mod tasks;

use serde::{Serialize, Serializer};

pub use pages::{PageCounts, VmaPages, compare_pages};
pub use render::render_text;
pub use tasks::compare_tasks;

/// The JSON schema version written in `version`.
pub const JSON_VERSION: u32 = 1;

/// Serialises a u64 as a `0x…` string.
pub fn hex<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value:#x}"))
}

/// The whole diff of two sets.
#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub version: u32,
    pub a: String,
    pub b: String,
    pub changed: bool,
    pub processes: Membership,
    pub pages: PageCounts,
    pub tasks: Vec<TaskDiff>,
}

/// Members present on one side only.
#[derive(Debug, Default, Serialize)]
pub struct Membership {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
}

impl Membership {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A VMA as listed in a diff.
#[derive(Debug, Clone, Serialize)]
pub struct VmaRef {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    pub prot: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Resized {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end_a: u64,
    #[serde(serialize_with = "hex")]
    pub end_b: u64,
}

#[derive(Debug, Serialize)]
pub struct Reprotected {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    pub prot_a: String,
    pub prot_b: String,
}

#[derive(Debug, Default, Serialize)]
pub struct VmaChanges {
    pub added: Vec<VmaRef>,
    pub removed: Vec<VmaRef>,
    pub resized: Vec<Resized>,
    pub reprotected: Vec<Reprotected>,
}

impl VmaChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.resized.is_empty()
            && self.reprotected.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct FdRef {
    pub fd: u32,
    pub desc: String,
}

#[derive(Debug, Serialize)]
pub struct FdMove {
    pub from: u32,
    pub to: u32,
    pub desc: String,
}

#[derive(Debug, Serialize)]
pub struct FdChange {
    pub fd: u32,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Default, Serialize)]
pub struct FdChanges {
    pub opened: Vec<FdRef>,
    pub closed: Vec<FdRef>,
    pub moved: Vec<FdMove>,
    pub changed: Vec<FdChange>,
}

impl FdChanges {
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty()
            && self.closed.is_empty()
            && self.moved.is_empty()
            && self.changed.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct RegisterChange {
    pub name: &'static str,
    #[serde(serialize_with = "hex")]
    pub a: u64,
    #[serde(serialize_with = "hex")]
    pub b: u64,
}

/// A named task-wide value that differs (`blk_sigset`, `rlimit_nofile.cur`, `creds.uid`).
#[derive(Debug, Serialize)]
pub struct StateChange {
    pub name: String,
    #[serde(serialize_with = "hex")]
    pub a: u64,
    #[serde(serialize_with = "hex")]
    pub b: u64,
}

#[derive(Debug, Serialize)]
pub struct ThreadRegisters {
    pub tid: u32,
    pub changes: Vec<RegisterChange>,
}

#[derive(Debug, Serialize)]
pub struct SigActionRef {
    #[serde(serialize_with = "hex")]
    pub handler: u64,
    #[serde(serialize_with = "hex")]
    pub flags: u64,
    #[serde(serialize_with = "hex")]
    pub restorer: u64,
    #[serde(serialize_with = "hex")]
    pub mask: u64,
}

#[derive(Debug, Serialize)]
pub struct SigActionChange {
    pub signal: u32,
    pub a: SigActionRef,
    pub b: SigActionRef,
}

/// Page counts of one process, overall and per VMA.
#[derive(Debug, Default, Serialize)]
pub struct TaskPages {
    #[serde(flatten)]
    pub counts: PageCounts,
    pub vmas: Vec<VmaPages>,
}

/// Everything that differs for one process present in both sets.
#[derive(Debug, Serialize)]
pub struct TaskDiff {
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_b: Option<String>,
    pub threads: Membership,
    pub vmas: VmaChanges,
    pub fds: FdChanges,
    pub registers: Vec<ThreadRegisters>,
    pub sigactions: Vec<SigActionChange>,
    pub state: Vec<StateChange>,
    pub pages: TaskPages,
}

impl TaskDiff {
    /// Whether anything at all differs for this process.
    pub fn is_changed(&self) -> bool {
        self.comm_b.is_some()
            || !self.threads.is_empty()
            || !self.vmas.is_empty()
            || !self.fds.is_empty()
            || !self.registers.is_empty()
            || !self.sigactions.is_empty()
            || !self.state.is_empty()
            || self.pages.counts.differs()
    }
}
