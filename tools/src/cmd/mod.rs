//! One module per imgtool verb; each has an `Args` (clap) and a `run`.

pub mod decode;
pub mod encode;
pub mod info;
pub mod show;
pub mod x;
