//! Content digests of dumped pages, computed in parallel.
//!
//! Pages are compared by content, not by where they are stored: a page kept in a parent
//! image and the same bytes written again in a later dump are identical. Each dumped page is
//! hashed with XXH3-128 straight from the mmapped pages image (no copy); the work is spread
//! over rayon's pool in chunks of pages, so one huge pagemap entry still uses every core.
//!
//! XXH3 is chosen over a cryptographic hash for speed (about ten times BLAKE3 on 4 KiB
//! inputs on the development machine): 128 bits make an accidental collision negligible, but
//! a crafted image could collide on purpose. `PageDigest` therefore keeps the page's bytes, so
//! a caller that must not trust a digest match (`imgtool diff --verify`) compares them.

use indicatif::ProgressBar;
use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_128;

use crate::analyse::memory::{PAGE_SIZE, ResidentRun};

/// A page's digest, tagged with its virtual address and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageDigest<'a> {
    pub vaddr: u64,
    pub digest: u128,
    pub page: &'a [u8],
}

/// Pages hashed per rayon work item and per progress update.
const PAGES_PER_TASK: usize = 256;

/// Hashes every page that has bytes in `runs`; the result is sorted by address.
///
/// Runs without bytes (lazy pages, not in the images) produce no digest.
pub fn digest_runs<'a>(runs: &[ResidentRun<'a>], progress: &ProgressBar) -> Vec<PageDigest<'a>> {
    let pages: Vec<(u64, &'a [u8])> = runs
        .iter()
        .filter_map(|run| run.bytes.map(|bytes| (run.vaddr, bytes)))
        .flat_map(|(vaddr, bytes)| {
            bytes
                .chunks_exact(PAGE_SIZE)
                .enumerate()
                .map(move |(index, page)| (vaddr + (index * PAGE_SIZE) as u64, page))
        })
        .collect();

    let mut digests: Vec<PageDigest<'a>> = pages
        .par_chunks(PAGES_PER_TASK)
        .flat_map_iter(|chunk| {
            progress.inc((chunk.len() * PAGE_SIZE) as u64);
            chunk.iter().map(|&(vaddr, page)| PageDigest {
                vaddr,
                digest: xxh3_128(page),
                page,
            })
        })
        .collect();

    // Pagemaps are sorted, but the order is cheap to make sure of.
    if !digests.is_sorted_by_key(|page| page.vaddr) {
        digests.sort_by_key(|page| page.vaddr);
    }
    digests
}
