//! Hashing: BLAKE3 of many 4 KiB pages at once (the same result as `blake3::hash(page)`),
//! and the hasher of the in-memory maps keyed by those hashes.
//!
//! `blake3::hash` on one page keeps only 4 of the 16 AVX-512 lanes busy (a page is 4 chunks of
//! 1 KiB). Hashing a group of pages together fills the lanes: chunk j of every page in one
//! SIMD pass (counter j, chunk start/end flags), then both parent levels of every page the same
//! way, the last with the root flag. The tree of a 4 KiB input is fixed — chunks 0..4, parents
//! (0,1) and (2,3), root over the two — so this reproduces BLAKE3 exactly; the tests check it
//! against `blake3::hash`.
//!
//! It drives `blake3::platform::Platform::hash_many`, which blake3 marks as unstable. The
//! dependency is pinned in the workspace; a change there fails to compile (or the tests), it
//! cannot silently change hashes.

use blake3::IncrementCounter;
use blake3::platform::Platform;

use std::collections::HashMap;

use super::PageHash;
use crate::protocol::PAGE_SIZE;

const CHUNK: usize = 1024;
const CHUNKS_PER_PAGE: usize = PAGE_SIZE / CHUNK;
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];

/// Hashes each of `pages` (each exactly 4096 bytes) into `out`.
pub fn hash_pages(pages: &[&[u8]], out: &mut Vec<PageHash>) {
    let platform = Platform::detect();
    let n = pages.len();
    out.clear();
    if n == 0 {
        return;
    }

    // Chunk CVs: cvs[j][i] is chunk j of page i.
    let mut cvs = vec![[0u8; 32 * CHUNKS_PER_PAGE]; n];
    let mut level = vec![0u8; 32 * n];
    for j in 0..CHUNKS_PER_PAGE {
        let inputs: Vec<&[u8; CHUNK]> = pages
            .iter()
            .map(|p| {
                p[j * CHUNK..(j + 1) * CHUNK]
                    .try_into()
                    .expect("page is 4096 bytes")
            })
            .collect();
        platform.hash_many(
            &inputs,
            &IV,
            j as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut level,
        );
        for (i, cv) in level.chunks_exact(32).enumerate() {
            cvs[i][j * 32..(j + 1) * 32].copy_from_slice(cv);
        }
    }

    // Parents (0,1) and (2,3): the two CVs side by side are one 64-byte block.
    let mut parents = vec![[0u8; 64]; n];
    for half in 0..2 {
        let inputs: Vec<&[u8; 64]> = cvs
            .iter()
            .map(|c| c[half * 64..(half + 1) * 64].try_into().expect("64 bytes"))
            .collect();
        platform.hash_many(
            &inputs,
            &IV,
            0,
            IncrementCounter::No,
            PARENT,
            0,
            0,
            &mut level,
        );
        for (i, cv) in level.chunks_exact(32).enumerate() {
            parents[i][half * 32..(half + 1) * 32].copy_from_slice(cv);
        }
    }

    let inputs: Vec<&[u8; 64]> = parents.iter().collect();
    platform.hash_many(
        &inputs,
        &IV,
        0,
        IncrementCounter::No,
        PARENT | ROOT,
        0,
        0,
        &mut level,
    );
    out.extend(
        level
            .chunks_exact(32)
            .map(|h| <PageHash>::try_from(h).expect("32 bytes")),
    );
}

/// Hasher for maps keyed by BLAKE3 hashes: the key is already uniformly random, so its first
/// eight bytes are the hash (no SipHash pass per lookup).
#[derive(Debug, Default, Clone, Copy)]
pub struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Arrays hash their bytes in one call after no length prefix; take the first 8.
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b);
    }
}

/// The dedup map type.
pub type HashIndex = HashMap<PageHash, u64, std::hash::BuildHasherDefault<PrefixHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_hashes_equal_blake3_of_each_page() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for n in [1usize, 3, 16, 17, 40] {
            let data: Vec<u8> = (0..n * PAGE_SIZE / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            let pages: Vec<&[u8]> = data.chunks(PAGE_SIZE).collect();
            let mut out = Vec::new();
            hash_pages(&pages, &mut out);
            assert_eq!(out.len(), n);
            for (page, h) in pages.iter().zip(&out) {
                assert_eq!(h, blake3::hash(page).as_bytes());
            }
        }
        let zero = vec![0u8; PAGE_SIZE];
        let mut out = Vec::new();
        hash_pages(&[&zero], &mut out);
        assert_eq!(&out[0], blake3::hash(&zero).as_bytes());
    }
}
