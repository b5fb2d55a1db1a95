//! cryo's image format: CRIU v1.1 images, read zero-copy and written as a stream.
//!
//! `schema` holds the protobuf messages (our own `.proto` files, compiled at build time).
//! The other modules are added by the format-core work.

pub mod schema;
