//! cryo's page server: CRIU's page-server protocol, a deduplicating zstd page store, export
//! to CRIU image directories, and a blocking client for the dumper and restorer.
//!
//! - [`protocol`]: the wire format (pure parsing).
//! - [`store`]: the content-addressed page store and its on-disk format.
//! - [`server`]: the tokio server feeding the store and answering GETs.
//! - [`export`]: writing a stored checkpoint as `pagemap-*.img` + `pages-*.img`.
//! - [`client`]: the std-only client (`open2`, `add_pages`, `add_from_fd`, `get`, `close`).
//! - [`record`]: `DIR/page-server-checkpoint`, which ties an image directory to its checkpoint.

pub mod client;
pub mod export;
pub mod protocol;
pub mod record;
pub mod server;
pub mod store;
