//! cryo's dumper: checkpoints a live process tree into CRIU-format images.
//!
//! The pieces, from the privileged edge inwards:
//!
//! * [`ptrace`] — checked wrappers over the ptrace requests (seize, interrupt, regsets,
//!   signal masks, TLS, rseq).
//! * [`remote`] — running syscalls inside a stopped tracee at a `syscall` instruction
//!   of its vdso, with registers saved and restart semantics handled
//!   ([`remote::RemoteThread`]; reusable by the restorer).
//! * [`parasite`] — the scratch mapping and page pipe planted with remote syscalls,
//!   removed again before the tree resumes.
//! * [`tree`] — finding and freezing the tree; [`tree::FrozenTree`] detaches on drop.
//! * [`vma`], [`pages`], [`files`], [`task`], [`signals`], [`tty`], [`regs`],
//!   [`ids`] — turning /proc, ptrace
//!   and remote-syscall answers into image entries with CRIU's semantics.
//! * [`dump`] — the whole dump: [`dump::dump`] with [`dump::DumpOptions`].
//!
//! All tracing of a tree happens on the thread that calls [`dump::dump`] (ptrace is
//! thread-affine); only the page drain runs on a helper thread.

pub mod anon;
pub mod dump;
pub mod files;
pub mod ids;
pub mod interrupt;
pub mod pages;
pub mod parasite;
pub mod ptrace;
pub mod regs;
pub mod remote;
pub mod signals;
pub mod task;
pub mod tree;
pub mod tty;
pub mod vma;

pub use dump::{CriuWire, DumpError, DumpOptions, DumpSummary, dump};
