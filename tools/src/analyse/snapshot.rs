//! One image set, loaded into the shape the analysers compare and print.
//!
//! A `Snapshot` is built by `load` from `cryo_format`'s typed image accessors: per process the pstree
//! entry, the leader's task core (comm, signal handlers), every thread's registers, the fd
//! table with a description of each open file, and the memory view (`ProcessMemory`). Nothing
//! here copies page bytes: the memory view borrows the mmapped pages images of the set and of
//! its `parent` chain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::analyse::memory::ProcessMemory;

/// General-purpose registers of one thread, by name, in `user_regs_struct` order.
pub type Registers = Vec<(&'static str, u64)>;

/// Task-wide state by name: task state, blocked signals, credentials, resource limits.
pub type TaskState = Vec<(String, u64)>;

/// A signal handler (`sa_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One open descriptor and what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdView {
    /// Human description: a path, `pipe[INODE]`, or `TYPE.ID`.
    pub desc: String,
    /// File position, for regular files.
    pub pos: Option<u64>,
    /// Open flags of the file, for regular files.
    pub open_flags: Option<u32>,
}

/// One process of the tree.
#[derive(Debug)]
pub struct TaskView<'a> {
    pub pid: u32,
    pub comm: String,
    pub threads: Vec<u32>,
    pub registers: BTreeMap<u32, Registers>,
    pub sigactions: Vec<SigAction>,
    pub state: TaskState,
    pub fds: BTreeMap<u32, FdView>,
    pub memory: ProcessMemory<'a>,
}

/// A whole image set.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub dir: PathBuf,
    pub tasks: BTreeMap<u32, TaskView<'a>>,
}
