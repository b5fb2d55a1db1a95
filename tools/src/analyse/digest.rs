//! Content digests of dumped pages, computed in parallel.
//!
//! Pages are compared by content, not by where they are stored: a page kept in a parent
//! image and the same bytes written again in a later dump are identical. Each resident page is
//! hashed with BLAKE3 straight from the mmapped pages image (no copy); the work is spread over
//! rayon's pool, page by page, so one huge pagemap entry still uses every core.

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::analyse::memory::{PAGE_SIZE, ResidentRun};

/// Bytes of a page digest kept for comparison (the first 128 bits of BLAKE3).
pub const DIGEST_LEN: usize = 16;

/// A page's digest, tagged with its virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageDigest {
    pub vaddr: u64,
    pub digest: [u8; DIGEST_LEN],
}

/// Pages hashed per rayon work item and per progress update.
const PAGES_PER_TASK: usize = 64;

/// Hashes every page that has bytes in `runs`; the result is sorted by address.
///
/// Runs without bytes (pages that were not transferred into the images) produce no digest.
pub fn digest_runs(runs: &[ResidentRun<'_>], progress: &ProgressBar) -> Vec<PageDigest> {
    let pages: Vec<(u64, &[u8])> = runs
        .iter()
        .filter_map(|run| run.bytes.map(|bytes| (run.vaddr, bytes)))
        .flat_map(|(vaddr, bytes)| {
            bytes
                .chunks_exact(PAGE_SIZE)
                .enumerate()
                .map(move |(index, page)| (vaddr + (index * PAGE_SIZE) as u64, page))
        })
        .collect();

    let mut digests: Vec<PageDigest> = pages
        .par_chunks(PAGES_PER_TASK)
        .flat_map_iter(|chunk| {
            progress.inc((chunk.len() * PAGE_SIZE) as u64);
            chunk.iter().map(|&(vaddr, page)| PageDigest {
                vaddr,
                digest: digest_page(page),
            })
        })
        .collect();

    // Pagemaps are sorted, but a damaged one need not be: never rely on it.
    if !digests.is_sorted_by_key(|page| page.vaddr) {
        digests.sort_by_key(|page| page.vaddr);
    }
    digests
}

/// The digest of one page.
pub fn digest_page(page: &[u8]) -> [u8; DIGEST_LEN] {
    let hash = blake3::hash(page);
    let mut digest = [0u8; DIGEST_LEN];
    digest.copy_from_slice(&hash.as_bytes()[..DIGEST_LEN]);
    digest
}
