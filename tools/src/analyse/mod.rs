//! The offline analysers behind `imgtool diff`, `validate` and `mem`.
//!
//! The layers, bottom up: `load` reads an image set through `cryo_format::ImageSet` into a
//! `Snapshot` (`snapshot`, `vma`, `memory`), with page bytes borrowed from the pages images
//! that `cryo_format::MemoryView` maps (following `parent` chains); `digest` hashes pages in
//! parallel. On top, `diff` compares
//! two snapshots, `validate` checks every rule of a set and lists all problems, and `memview`
//! prints tables, hexdumps, search hits and argv/env of one process. The `cmd::*` modules only
//! parse arguments and print.

pub mod diff;
pub mod digest;
pub mod hexdump;
pub mod load;
pub mod memory;
pub mod memview;
pub mod progress;
pub mod snapshot;
pub mod validate;
pub mod vma;
