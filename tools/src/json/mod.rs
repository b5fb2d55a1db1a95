//! crit-compatible JSON: the rendering python crit uses for `decode`/`show`, and its inverse
//! for `encode`.
//!
//! - [`pyjson`] lays JSON text out as python's `json.dump` does (compact or `indent=4`,
//!   `ensure_ascii`), so the bytes equal crit's;
//! - [`options`] reads the `(criu)` display options from the schema and holds crit's
//!   flag/value tables;
//! - [`render`] and [`parse`] convert one message to and from a JSON value;
//! - [`check`] adds what prost does not check (required fields) and names bad fields;
//! - [`image`] converts whole images, extra payloads included;
//! - [`output`] writes results whole (temp file + rename) or to stdout.

pub mod check;
pub mod image;
pub mod options;
pub mod output;
pub mod parse;
pub mod pyjson;
pub mod render;
