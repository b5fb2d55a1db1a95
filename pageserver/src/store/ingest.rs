//! Receiving one checkpoint: classify, hash, deduplicate, compress and append pages, then
//! commit everything in one index transaction.
//!
//! Pages arrive in batches (a few hundred at a time). One parallel pass (rayon) over a batch
//! detects zero pages (never hashed), hashes the others, looks them up in the store's
//! committed set and compresses those it lacks, with one reused zstd context per worker
//! thread. A serial pass then resolves duplicates within this session (dropping their
//! compressed copies) and appends the new pages to the session's segment in order. Nothing here is visible to readers until
//! [`CheckpointWriter::commit`] returns.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use redb::ReadableTable;

use super::codec::{self, Codec};
use super::hash;
use super::segment::{self, RECORD_HEADER_LEN, SegmentWriter};
use super::{
    CHECKPOINTS, CheckpointInfo, CheckpointStats, HashIndex, PAGEMAPS, PageHash, PageLoc, SEGMENTS,
    Store, StoreError, StoredPagemap, page_ref,
};
use crate::protocol::{DstId, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::store::pagemap::Entry;

/// The parallel half of adding pages: zero check, hash, lookup in the committed set, and
/// encoding of pages the store lacks. It reads no session state, so a session can classify
/// batch N+1 while it appends batch N; duplicates within the session are resolved when the
/// batch is added.
#[derive(Debug, Clone)]
pub struct Classifier {
    store: Arc<Store>,
}

/// A classified batch, to hand to [`CheckpointWriter::add_classified`].
pub struct Classified(Vec<Result<Class, StoreError>>);

impl std::fmt::Debug for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Classified({} pages)", self.0.len())
    }
}

impl Classifier {
    /// Classifies whole pages (uses the rayon pool).
    pub fn classify(&self, data: &[u8]) -> Classified {
        let level = self.store.zstd_level;
        let known = self.store.known.read().expect("dedup map poisoned");
        Classified(
            data.par_chunks(HASH_GROUP * PAGE_SIZE)
                .flat_map_iter(|group| classify_group(group, &known, level))
                .collect(),
        )
    }
}

/// Pages hashed together (fills the 16 AVX-512 lanes of BLAKE3; see `hash`).
const HASH_GROUP: usize = 16;

/// Classifies a group of pages: zero, already stored, or new (hashed and encoded).
fn classify_group(group: &[u8], known: &HashIndex, level: i32) -> Vec<Result<Class, StoreError>> {
    let pages: Vec<(&[u8], bool)> = group
        .chunks(PAGE_SIZE)
        .map(|p| (p, codec::is_zero(p)))
        .collect();
    let nonzero: Vec<&[u8]> = pages
        .iter()
        .filter(|(_, zero)| !zero)
        .map(|(p, _)| *p)
        .collect();
    let mut hashes = Vec::with_capacity(nonzero.len());
    hash::hash_pages(&nonzero, &mut hashes);

    let mut hashes = hashes.into_iter();
    pages
        .into_iter()
        .map(|(page, zero)| {
            if zero {
                return Ok(Class::Zero);
            }
            let hash = hashes.next().expect("one hash per non-zero page");
            if let Some(&r) = known.get(&hash) {
                return Ok(Class::Known(r));
            }
            Ok(Class::New(hash, codec::encode_page(level, page)?))
        })
        .collect()
}

/// What the parallel pass found out about one page.
pub(crate) enum Class {
    Zero,
    Known(u64),
    New(PageHash, Option<(Codec, Vec<u8>)>),
}

/// The checkpoint being received by one session.
pub struct CheckpointWriter {
    store: Arc<Store>,
    id: u64,
    parent: Option<u64>,
    peer: String,
    segment: Option<SegmentWriter>,
    session_hashes: HashIndex,
    new_pages: Vec<PageLoc>,
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
            session_hashes: HashIndex::default(),
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
        let classified = self.classifier().classify(data);
        self.add_classified(data, classified)
    }

    /// A classifier for this store, to run ahead on another thread (see [`Classifier`]).
    pub fn classifier(&self) -> Classifier {
        Classifier {
            store: Arc::clone(&self.store),
        }
    }

    /// Stores a batch classified by [`Classifier::classify`] (same bytes, in stream order).
    pub fn add_classified(
        &mut self,
        data: &[u8],
        classified: Classified,
    ) -> Result<(), StoreError> {
        debug_assert!(data.len().is_multiple_of(PAGE_SIZE));
        let i = self.current.expect("add_pages called with no open pagemap");
        let n = (data.len() / PAGE_SIZE) as u64;
        assert!(n <= self.expecting, "more pages than the entry announced");
        assert_eq!(
            classified.0.len() as u64,
            n,
            "classification of another batch"
        );
        self.expecting -= n;
        let classified = classified.0;

        let mut refs = Vec::with_capacity(classified.len());
        for (k, class) in classified.into_iter().enumerate() {
            let r = match class? {
                Class::Zero => {
                    self.stats.zero_pages += 1;
                    0
                }
                Class::Known(r) => {
                    self.stats.dedup_pages += 1;
                    r
                }
                Class::New(hash, packed) => match self.session_hashes.get(&hash) {
                    Some(&r) => {
                        self.stats.dedup_pages += 1;
                        r
                    }
                    None => {
                        let page = &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE];
                        let r = self.append(hash, packed, page)?;
                        self.session_hashes.insert(hash, r);
                        r
                    }
                },
            };
            refs.push(r);
        }
        self.pagemaps[i].refs.extend_from_slice(&refs);
        Ok(())
    }

    /// Appends a new page to this session's segment; returns its ref.
    fn append(
        &mut self,
        hash: PageHash,
        packed: Option<(Codec, Vec<u8>)>,
        page: &[u8],
    ) -> Result<u64, StoreError> {
        if self.segment.is_none() {
            let id = self
                .store
                .next_segment
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.segment = Some(SegmentWriter::create(&self.store.segments_dir, id)?);
        }
        let seg = self.segment.as_mut().expect("created above");
        let index = u32::try_from(self.new_pages.len())
            .map_err(|_| StoreError::SegmentFull { segment: seg.id() })?;
        let (codec, bytes) = match packed {
            Some((codec, ref z)) => (codec, &z[..]),
            None => (Codec::Raw, page),
        };
        let offset = seg.append(codec, bytes)?;
        self.stats.stored_bytes += (RECORD_HEADER_LEN + bytes.len()) as u64;
        self.stats.new_pages += 1;
        self.new_pages.push(PageLoc {
            segment: seg.id(),
            offset,
            stored_len: bytes.len() as u32,
            codec,
            hash,
        });
        Ok(page_ref(seg.id(), index))
    }

    /// Pages the current present entry still waits for.
    pub fn pages_expected(&self) -> u64 {
        self.expecting
    }

    /// Makes the checkpoint durable and listed: seal the segment, then commit the index.
    pub fn commit(mut self) -> Result<CheckpointInfo, StoreError> {
        let store = Arc::clone(&self.store);
        let commit_started = Instant::now();
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
        if let Some((segment, len)) = sealed {
            let mut segs = txn.open_table(SEGMENTS).map_err(|e| store.idx(e))?;
            let list = segment::encode_page_list(len, &self.new_pages);
            segs.insert(segment, &list[..]).map_err(|e| store.idx(e))?;
        }
        {
            let mut pms = txn.open_table(PAGEMAPS).map_err(|e| store.idx(e))?;
            for pm in &self.pagemaps {
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
        tracing::debug!(
            checkpoint = self.id,
            new_pages = self.new_pages.len(),
            commit_ms = commit_started.elapsed().as_millis() as u64,
            "index committed"
        );

        // Now other sessions may deduplicate against these pages. If one committed the same
        // content meanwhile, its copy stays the canonical one; ours is still valid for us.
        {
            let mut known = store.known.write().expect("dedup map poisoned");
            for (i, loc) in self.new_pages.iter().enumerate() {
                known
                    .entry(loc.hash)
                    .or_insert(page_ref(loc.segment, i as u32));
            }
        }
        if let Some((segment, _)) = sealed {
            let list = Arc::new(std::mem::take(&mut self.new_pages));
            store
                .segment_pages
                .lock()
                .expect("page list cache poisoned")
                .insert(segment, list);
        }
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
