//! A stored pagemap: the entries a client sent for one destination, and one page reference per
//! present page, in the order the pages travelled (the order of a CRIU pages image).
//!
//! Encoded in the index as one value (little-endian):
//!
//! ```text
//! version u8 = 1 | kind u8 (1 pid, 2 shmem) | 0 u16 | pages_id u32 | dst id u64
//! n_entries u64 | n_refs u64
//! entry × n_entries = vaddr u64 | nr_pages u64 | flags u32
//! ref   × n_refs    = page id u64 (0 = zero page)
//! ```

use super::StoreError;
use crate::protocol::{DstId, DstKind, PAGE_SIZE, PE_PRESENT};

const PAGEMAP_VERSION: u8 = 1;
const HEAD_LEN: usize = 32;
const ENTRY_LEN: usize = 20;

/// One pagemap entry as sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
}

impl Entry {
    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }

    pub fn end(&self) -> u64 {
        self.vaddr + self.nr_pages * PAGE_SIZE as u64
    }
}

/// A pagemap of one destination in one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPagemap {
    pub dst: DstId,
    /// `pages-<pages_id>.img` on export (0x10001, 0x10002… in OPEN order, like CRIU's server).
    pub pages_id: u32,
    pub entries: Vec<Entry>,
    /// One per present page, walking `entries` in order.
    pub refs: Vec<u64>,
}

impl StoredPagemap {
    /// Serialises for the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEAD_LEN + self.entries.len() * ENTRY_LEN + self.refs.len() * 8);
        out.push(PAGEMAP_VERSION);
        out.push(match self.dst.kind {
            DstKind::Pid => 1,
            DstKind::Shmem => 2,
        });
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.pages_id.to_le_bytes());
        out.extend_from_slice(&self.dst.id.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.refs.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.vaddr.to_le_bytes());
            out.extend_from_slice(&e.nr_pages.to_le_bytes());
            out.extend_from_slice(&e.flags.to_le_bytes());
        }
        for r in &self.refs {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out
    }

    /// Parses an index value, checking every size; `checkpoint` names it in errors.
    pub fn decode(checkpoint: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::CorruptPagemap { checkpoint, reason };
        if bytes.len() < HEAD_LEN {
            return Err(bad(format!(
                "{} bytes, shorter than the header",
                bytes.len()
            )));
        }
        if bytes[0] != PAGEMAP_VERSION {
            return Err(bad(format!(
                "version {} (this build reads {PAGEMAP_VERSION})",
                bytes[0]
            )));
        }
        let kind = match bytes[1] {
            1 => DstKind::Pid,
            2 => DstKind::Shmem,
            k => return Err(bad(format!("destination kind {k}"))),
        };
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let pages_id = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let dst = DstId {
            kind,
            id: u64_at(8),
        };
        let n_entries = u64_at(16);
        let n_refs = u64_at(24);
        let want = n_entries
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|e| n_refs.checked_mul(8).and_then(|r| r.checked_add(e)))
            .and_then(|b| b.checked_add(HEAD_LEN as u64));
        if want != Some(bytes.len() as u64) {
            return Err(bad(format!(
                "{n_entries} entries and {n_refs} refs do not fit {} bytes",
                bytes.len()
            )));
        }

        let mut entries = Vec::with_capacity(n_entries as usize);
        let mut at = HEAD_LEN;
        let mut present = 0u64;
        for _ in 0..n_entries {
            let e = Entry {
                vaddr: u64_at(at),
                nr_pages: u64_at(at + 8),
                flags: u32::from_le_bytes(bytes[at + 16..at + 20].try_into().expect("4 bytes")),
            };
            if e.is_present() {
                present = present.saturating_add(e.nr_pages);
            }
            entries.push(e);
            at += ENTRY_LEN;
        }
        if present != n_refs {
            return Err(bad(format!(
                "{present} present pages but {n_refs} page refs"
            )));
        }
        let refs = bytes[at..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        Ok(Self {
            dst,
            pages_id,
            entries,
            refs,
        })
    }

    /// Finds the page at `vaddr`: the entry holding it and, for present entries, the index of
    /// its ref and how many pages follow contiguously in that entry.
    pub fn locate(&self, vaddr: u64) -> Option<Located> {
        let mut ref_index = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            if vaddr >= e.vaddr && vaddr < e.end() {
                let page = (vaddr - e.vaddr) / PAGE_SIZE as u64;
                return Some(Located {
                    entry: i,
                    flags: e.flags,
                    ref_index: e.is_present().then_some(ref_index + page),
                    pages_left: e.nr_pages - page,
                });
            }
            if e.is_present() {
                ref_index += e.nr_pages;
            }
        }
        None
    }
}

/// A pagemap's entries sorted by address, for many lookups (lazy GETs, flattening).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagemapIndex {
    /// (vaddr, entry index, index of the entry's first ref), sorted by vaddr.
    runs: Vec<(u64, usize, u64)>,
    entries: Vec<Entry>,
}

impl PagemapIndex {
    pub fn new(pm: &StoredPagemap) -> Self {
        let mut runs = Vec::with_capacity(pm.entries.len());
        let mut ref_index = 0u64;
        for (i, e) in pm.entries.iter().enumerate() {
            runs.push((e.vaddr, i, ref_index));
            if e.is_present() {
                ref_index += e.nr_pages;
            }
        }
        // Stable: of two entries at one address the first sent stays first, as in `locate`.
        runs.sort_by_key(|r| r.0);
        Self {
            runs,
            entries: pm.entries.clone(),
        }
    }

    /// Like [`StoredPagemap::locate`], in O(log n) (entries are assumed not to overlap; a
    /// hostile pagemap with overlaps gets an answer from one of them).
    pub fn locate(&self, vaddr: u64) -> Option<Located> {
        let after = self.runs.partition_point(|r| r.0 <= vaddr);
        let &(start, i, first_ref) = self.runs.get(after.checked_sub(1)?)?;
        let e = &self.entries[i];
        if vaddr >= e.end() {
            return None;
        }
        let page = (vaddr - start) / PAGE_SIZE as u64;
        Some(Located {
            entry: i,
            flags: e.flags,
            ref_index: e.is_present().then_some(first_ref + page),
            pages_left: e.nr_pages - page,
        })
    }
}

/// Result of [`StoredPagemap::locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub entry: usize,
    pub flags: u32,
    pub ref_index: Option<u64>,
    pub pages_left: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PE_LAZY, PE_PARENT};

    fn sample() -> StoredPagemap {
        StoredPagemap {
            dst: DstId::pid(77),
            pages_id: 0x10001,
            entries: vec![
                Entry {
                    vaddr: 0x1000,
                    nr_pages: 2,
                    flags: PE_PRESENT,
                },
                Entry {
                    vaddr: 0x5000,
                    nr_pages: 3,
                    flags: PE_PARENT,
                },
                Entry {
                    vaddr: 0x9000,
                    nr_pages: 1,
                    flags: PE_PRESENT | PE_LAZY,
                },
            ],
            refs: vec![5, 0, 9],
        }
    }

    #[test]
    fn pagemap_round_trips_through_its_encoding() {
        let pm = sample();
        assert_eq!(StoredPagemap::decode(1, &pm.encode()).unwrap(), pm);
    }

    #[test]
    fn truncated_or_inconsistent_pagemaps_are_refused() {
        let bytes = sample().encode();
        assert!(matches!(
            StoredPagemap::decode(3, &bytes[..bytes.len() - 1]),
            Err(StoreError::CorruptPagemap { checkpoint: 3, .. })
        ));
        let mut pm = sample();
        pm.refs.pop();
        assert!(StoredPagemap::decode(3, &pm.encode()).is_err());
    }

    #[test]
    fn the_sorted_index_agrees_with_the_linear_walk() {
        let mut pm = sample();
        // Out of address order, as a pagemap may legally be.
        pm.entries.push(Entry {
            vaddr: 0x0,
            nr_pages: 1,
            flags: PE_PRESENT,
        });
        pm.refs.push(11);
        let index = PagemapIndex::new(&pm);
        for vaddr in (0..0xc000u64).step_by(0x1000) {
            assert_eq!(index.locate(vaddr), pm.locate(vaddr), "vaddr {vaddr:#x}");
        }
    }

    #[test]
    fn locate_walks_refs_across_entries() {
        let pm = sample();
        let at = pm.locate(0x9000).unwrap();
        assert_eq!(at.ref_index, Some(2));
        assert_eq!(at.pages_left, 1);
        let hole = pm.locate(0x6000).unwrap();
        assert_eq!(hole.ref_index, None);
        assert_eq!(hole.pages_left, 2);
        assert!(pm.locate(0x3000).is_none());
    }
}
