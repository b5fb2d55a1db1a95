//! What the index records about a committed checkpoint: its parent, peer and ingest counters.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::protocol::PAGE_SIZE;

/// Counters of one checkpoint, computed while it is received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Present pages received (zero pages included).
    pub pages_received: u64,
    /// Present pages that were all zero.
    pub zero_pages: u64,
    /// Present non-zero pages already in the store or earlier in this checkpoint.
    pub dedup_pages: u64,
    /// Pages this checkpoint added to the store.
    pub new_pages: u64,
    /// Bytes of segment records this checkpoint wrote (headers included).
    pub stored_bytes: u64,
    /// Pages announced as being in the parent (holes).
    pub parent_pages: u64,
    /// Pages announced as lazy and not sent.
    pub lazy_pages: u64,
    /// Seconds from the first request to the commit.
    pub seconds: f64,
}

impl CheckpointStats {
    pub fn raw_bytes(&self) -> u64 {
        self.pages_received * PAGE_SIZE as u64
    }

    /// Raw bytes per stored byte (∞ shown as raw bytes when nothing was stored).
    pub fn reduction_ratio(&self) -> f64 {
        self.raw_bytes() as f64 / self.stored_bytes.max(1) as f64
    }

    /// Received MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.raw_bytes() as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
    }
}

/// A committed checkpoint, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub parent: Option<u64>,
    /// Seconds since the epoch at commit.
    pub committed_at: u64,
    /// Peer address of the session.
    pub peer: String,
    pub pagemaps: u64,
    pub stats: CheckpointStats,
}

pub(super) fn decode_info(id: u64, bytes: &[u8]) -> Result<CheckpointInfo, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::CorruptCheckpoint {
        checkpoint: id,
        reason: e.to_string(),
    })
}
