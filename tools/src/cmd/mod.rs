//! One module per imgtool verb; each has an `Args` (clap) and a `run`.

pub mod decode;
pub mod diff;
pub mod encode;
pub mod info;
pub mod mem;
pub mod show;
pub mod validate;
pub mod x;
