//! Receiving one checkpoint: classify, hash, deduplicate, compress and append pages, then
//! commit everything in one index transaction.
//!
//! Pages arrive in batches (a few hundred at a time). Each batch is first hashed in parallel
//! (rayon; zero pages are detected before hashing and never hashed), then looked up — in the
//! store's committed set, then in this session's own new pages — and the pages that are new
//! are compressed in parallel with one reused zstd context per worker thread, then appended
//! to the session's segment in order. Nothing here is visible to readers until
//! [`CheckpointWriter::commit`] returns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use redb::ReadableTable;

use super::segment::{Codec, RECORD_HEADER_LEN, SegmentWriter};
use super::{
    CHECKPOINTS, CheckpointInfo, CheckpointStats, PAGEMAPS, PAGES, PageHash, PageLoc, SEGMENTS,
    Store, StoreError, StoredPagemap,
};
use crate::protocol::{DstId, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::store::pagemap::Entry;

/// A ref to a page this session wrote: high bit set, low bits = index into `new_pages`.
const NEW_BIT: u64 = 1 << 63;

struct NewPage {
    hash: PageHash,
    offset: u64,
    stored_len: u32,
    codec: Codec,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Compresses one page with this thread's reused context; `None` means keep it raw.
fn compress_page(level: i32, page: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = zstd::bulk::Compressor::new(level).map_err(StoreError::Zstd)?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        let mut out = vec![0u8; PAGE_SIZE];
        match c.compress_to_buffer(page, &mut out[..]) {
            Ok(n) if n + RECORD_HEADER_LEN < PAGE_SIZE => {
                out.truncate(n);
                Ok(Some(out))
            }
            // Too big for the page-sized buffer or no gain: store raw.
            _ => Ok(None),
        }
    })
}

/// The checkpoint being received by one session.
pub struct CheckpointWriter {
    store: Arc<Store>,
    id: u64,
    parent: Option<u64>,
    peer: String,
    segment: Option<SegmentWriter>,
    session_hashes: HashMap<PageHash, u64>,
    new_pages: Vec<NewPage>,
    pagemaps: Vec<StoredPagemap>,
    current: Option<usize>,
    /// Present pages the current entry still expects.
    expecting: u64,
    stats: CheckpointStats,
    started: Instant,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CheckpointWriter {
    pub(super) fn new(store: Arc<Store>, id: u64, parent: Option<u64>, peer: String) -> Self {
        Self {
            store,
            id,
            parent,
            peer,
            segment: None,
            session_hashes: HashMap::new(),
            new_pages: Vec::new(),
            pagemaps: Vec::new(),
            current: None,
            expecting: 0,
            stats: CheckpointStats::default(),
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn parent(&self) -> Option<u64> {
        self.parent
    }

    /// Changes the checkpoint whose pages this one's holes refer to.
    pub fn set_parent(&mut self, parent: Option<u64>) {
        self.parent = parent;
    }

    /// Whether anything was opened or sent (an empty session commits nothing).
    pub fn is_empty(&self) -> bool {
        self.pagemaps.is_empty()
    }

    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// Opens (or reopens) the pagemap of `dst`; later entries go there.
    pub fn open_pagemap(&mut self, dst: DstId) {
        if let Some(i) = self.pagemaps.iter().position(|p| p.dst == dst) {
            self.current = Some(i);
            return;
        }
        let pages_id = 0x10000 + self.pagemaps.len() as u32 + 1;
        self.pagemaps.push(StoredPagemap {
            dst,
            pages_id,
            entries: Vec::new(),
            refs: Vec::new(),
        });
        self.current = Some(self.pagemaps.len() - 1);
    }

    /// The destination of the open pagemap.
    pub fn current_dst(&self) -> Option<DstId> {
        self.current.map(|i| self.pagemaps[i].dst)
    }

    /// Adds an entry to the open pagemap; present entries must then get their pages.
    pub fn add_entry(&mut self, vaddr: u64, nr_pages: u64, flags: u32) {
        let i = self.current.expect("add_entry called with no open pagemap");
        self.pagemaps[i].entries.push(Entry {
            vaddr,
            nr_pages,
            flags,
        });
        if flags & PE_PRESENT != 0 {
            self.expecting = nr_pages;
            self.stats.pages_received += nr_pages;
        } else if flags & PE_PARENT != 0 {
            self.stats.parent_pages += nr_pages;
        } else if flags & PE_LAZY != 0 {
            self.stats.lazy_pages += nr_pages;
        }
    }

    /// Stores a batch of whole pages of the current present entry.
    pub fn add_pages(&mut self, data: &[u8]) -> Result<(), StoreError> {
        debug_assert!(data.len().is_multiple_of(PAGE_SIZE));
        let i = self.current.expect("add_pages called with no open pagemap");
        let n = (data.len() / PAGE_SIZE) as u64;
        assert!(n <= self.expecting, "more pages than the entry announced");
        self.expecting -= n;

        let hashes: Vec<Option<PageHash>> = data
            .par_chunks(PAGE_SIZE)
            .map(|page| (!is_zero(page)).then(|| *blake3::hash(page).as_bytes()))
            .collect();

        // Resolve against the committed set and this session; collect the genuinely new pages.
        let mut refs = Vec::with_capacity(hashes.len());
        let mut fresh: Vec<(usize, PageHash)> = Vec::new();
        {
            let known = self.store.known.lock().expect("dedup map poisoned");
            for (k, h) in hashes.iter().enumerate() {
                let r = match h {
                    None => {
                        self.stats.zero_pages += 1;
                        0
                    }
                    Some(h) => match known.get(h).or_else(|| self.session_hashes.get(h)) {
                        Some(&id) => {
                            self.stats.dedup_pages += 1;
                            id
                        }
                        None => {
                            let local = NEW_BIT | (self.new_pages.len() + fresh.len()) as u64;
                            self.session_hashes.insert(*h, local);
                            fresh.push((k, *h));
                            local
                        }
                    },
                };
                refs.push(r);
            }
        }

        let level = self.store.zstd_level;
        let compressed: Vec<Result<Option<Vec<u8>>, StoreError>> = fresh
            .par_iter()
            .map(|&(k, _)| compress_page(level, &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]))
            .collect();

        if !fresh.is_empty() && self.segment.is_none() {
            let seg_id = self
                .store
                .next_segment
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.segment = Some(SegmentWriter::create(&self.store.segments_dir, seg_id)?);
        }
        for ((k, hash), packed) in fresh.into_iter().zip(compressed) {
            let seg = self.segment.as_mut().expect("created above");
            let packed = packed?;
            let (codec, bytes) = match packed {
                Some(ref z) => (Codec::Zstd, &z[..]),
                None => (Codec::Raw, &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]),
            };
            let offset = seg.append(codec, bytes)?;
            self.stats.stored_bytes += (RECORD_HEADER_LEN + bytes.len()) as u64;
            self.stats.new_pages += 1;
            self.new_pages.push(NewPage {
                hash,
                offset,
                stored_len: bytes.len() as u32,
                codec,
            });
        }
        self.pagemaps[i].refs.extend_from_slice(&refs);
        Ok(())
    }

    /// Pages the current present entry still waits for.
    pub fn pages_expected(&self) -> u64 {
        self.expecting
    }

    /// Makes the checkpoint durable and listed: seal the segment, then commit the index.
    pub fn commit(mut self) -> Result<CheckpointInfo, StoreError> {
        let store = Arc::clone(&self.store);
        let segment = self.segment.take();
        let sealed = match segment {
            Some(seg) => {
                let id = seg.id();
                Some((id, seg.seal()?))
            }
            None => None,
        };

        let _commit = store.commit_lock.lock().expect("commit lock poisoned");
        let txn = store.db.writer()?.begin_write().map_err(|e| store.idx(e))?;
        let mut ids = Vec::with_capacity(self.new_pages.len());
        let mut added: Vec<(PageHash, u64)> = Vec::new();
        {
            let known = store.known.lock().expect("dedup map poisoned");
            let mut pages = txn.open_table(PAGES).map_err(|e| store.idx(e))?;
            for np in &self.new_pages {
                // Another session may have committed the same content meanwhile.
                if let Some(&id) = known.get(&np.hash) {
                    ids.push(id);
                    continue;
                }
                let id = store
                    .next_page
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (segment, _) = sealed.expect("new pages imply a segment");
                let loc = PageLoc {
                    segment,
                    offset: np.offset,
                    stored_len: np.stored_len,
                    codec: np.codec,
                    hash: np.hash,
                };
                pages.insert(id, loc.encode()).map_err(|e| store.idx(e))?;
                ids.push(id);
                added.push((np.hash, id));
            }
        }
        if let Some((segment, len)) = sealed {
            let mut segs = txn.open_table(SEGMENTS).map_err(|e| store.idx(e))?;
            segs.insert(segment, len).map_err(|e| store.idx(e))?;
        }
        {
            let mut pms = txn.open_table(PAGEMAPS).map_err(|e| store.idx(e))?;
            for pm in &mut self.pagemaps {
                for r in &mut pm.refs {
                    if *r & NEW_BIT != 0 {
                        *r = ids[(*r & !NEW_BIT) as usize];
                    }
                }
                pms.insert((self.id, pm.dst.encode()), &pm.encode()[..])
                    .map_err(|e| store.idx(e))?;
            }
        }
        self.stats.seconds = self.started.elapsed().as_secs_f64();
        let info = CheckpointInfo {
            id: self.id,
            parent: self.parent,
            committed_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            peer: self.peer.clone(),
            pagemaps: self.pagemaps.len() as u64,
            stats: self.stats.clone(),
        };
        {
            let mut cps = txn.open_table(CHECKPOINTS).map_err(|e| store.idx(e))?;
            debug_assert!(cps.get(self.id).map(|r| r.is_none()).unwrap_or(true));
            let json = serde_json::to_vec(&info).expect("checkpoint info serialises");
            cps.insert(self.id, &json[..]).map_err(|e| store.idx(e))?;
        }
        txn.commit().map_err(|e| store.idx(e))?;

        store
            .known
            .lock()
            .expect("dedup map poisoned")
            .extend(added);
        self.new_pages.clear();
        self.pagemaps.clear();
        Ok(info)
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // Not committed: the segment is nobody's; remove it now rather than at next open.
        if let Some(seg) = self.segment.take() {
            let path = seg.path().to_path_buf();
            drop(seg);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove aborted segment");
            }
        }
    }
}

/// Whether a page is all zero bytes.
pub fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit pattern;
        // align_to only yields the correctly aligned middle part.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0)
}
