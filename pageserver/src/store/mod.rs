//! The page store: content-addressed, deduplicated, zstd-compressed, crash-safe.
//!
//! # On-disk format (store version 1)
//!
//! ```text
//! DIR/
//!   STORE              "cryo-pagestore 1\n" — refused if the version differs
//!   index.redb         redb database (tables below)
//!   segments/seg-<16 hex>.seg   page records (see `segment`)
//! ```
//!
//! Index tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `segments` | segment id u64 (from 1) | sealed length u64, page count u64, then per page: offset u64, stored_len u32, codec u8, BLAKE3 [32] |
//! | `checkpoints` | checkpoint id u64 | JSON [`CheckpointInfo`] |
//! | `pagemaps` | (checkpoint id, encoded dst_id) | [`StoredPagemap`] encoding |
//!
//! A page is identified by the BLAKE3 hash of its 4096 bytes; a page whose hash is already in
//! the store is not written again, whichever process, round or checkpoint sent it. All-zero
//! pages are never hashed or stored: their ref is 0. Other pages are encoded (zstd, arithmetic
//! runs as 16 bytes, raw when nothing shrinks them; see `codec`) into the segment of the
//! session that first sent them. A page ref is `segment id << 32 | index in that segment`; a
//! segment's page list is one index value, written once when its session commits (one insert
//! per checkpoint rather than one per page). On open, the writer loads every page list to
//! rebuild its in-memory hash → ref map (45 bytes read per stored page).
//!
//! # Checkpoints and crash safety
//!
//! One page-server connection that sends pages is one checkpoint, with an id the store hands
//! out at session start. Its pages go to a segment of its own; at CLOSE the segment is fsynced,
//! then one redb transaction (durable commit) adds the new pages, the segment, the pagemaps and
//! the checkpoint record, and only then is CLOSE answered. A checkpoint is listed only if that
//! transaction committed, so a session cut short is never listed; its segment is deleted (or,
//! after a crash, removed on the next open because no committed segment row names it).
//!
//! The store has one writer process (redb locks the index); within it, sessions ingest in
//! parallel and serialise only their final commit.

mod codec;
mod hash;
mod info;
mod ingest;
mod pagemap;
mod segment;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use codec::Codec;
pub use hash::{HashIndex, PrefixHasher};
use info::decode_info;
pub use info::{CheckpointInfo, CheckpointStats};
pub use ingest::{CheckpointWriter, Classified, Classifier};
pub use pagemap::{Entry, Located, PagemapIndex, StoredPagemap};

use crate::protocol::{DstId, PAGE_SIZE};

/// Version written to `STORE`.
pub const STORE_VERSION: u32 = 1;

/// A page's content address.
pub type PageHash = [u8; 32];

const SEGMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("segments");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const PAGEMAPS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("pagemaps");

/// Errors of the page store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("index {path}")]
    Index {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{path} is not a cryo page store of version {STORE_VERSION}: {found:?}")]
    Version { path: PathBuf, found: String },
    #[error("segment {segment} offset {offset}: corrupt page record: {reason}")]
    CorruptRecord {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("checkpoint {checkpoint}: corrupt pagemap: {reason}")]
    CorruptPagemap { checkpoint: u64, reason: String },
    #[error("checkpoint {checkpoint}: corrupt record: {reason}")]
    CorruptCheckpoint { checkpoint: u64, reason: String },
    #[error("page id {page}: not in the index")]
    MissingPage { page: u64 },
    #[error("checkpoint {checkpoint} does not exist or is incomplete")]
    NoCheckpoint { checkpoint: u64 },
    #[error("segment {segment}: more than 2^32 pages in one checkpoint")]
    SegmentFull { segment: u64 },
    #[error(
        "store {path} is in use by a running server and needs repair; stop the server \
         (a clean stop leaves it readable) or retry once the server has opened it"
    )]
    InUse { path: PathBuf },
    #[error("the store is open read-only")]
    ReadOnly,
    #[error("compression")]
    Zstd(#[source] std::io::Error),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::DiskFull {
                path: path.to_path_buf(),
            };
        }
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a stored page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLoc {
    pub segment: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub codec: Codec,
    pub hash: PageHash,
}

/// Builds a page ref from a segment id and an index in it.
pub fn page_ref(segment: u64, index: u32) -> u64 {
    (segment << 32) | u64::from(index)
}

/// Totals over the whole store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreTotals {
    pub checkpoints: u64,
    pub unique_pages: u64,
    pub segment_bytes: u64,
}

/// The index, opened for writing (the server) or read-only (list, stats, export — which may
/// run while a server writes: redb's single-writer mode lets readers follow its commits).
enum Db {
    Write(redb::Database),
    Read(redb::ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Write(d) => d.begin_read(),
            Db::Read(d) => d.begin_read(),
        }
    }

    fn writer(&self) -> Result<&redb::Database, StoreError> {
        match self {
            Db::Write(d) => Ok(d),
            Db::Read(_) => Err(StoreError::ReadOnly),
        }
    }
}

/// An open page store.
pub struct Store {
    root: PathBuf,
    segments_dir: PathBuf,
    index_path: PathBuf,
    db: Db,
    /// Hash → page id of every committed page (the dedup lookup).
    known: RwLock<HashIndex>,
    /// Page lists of committed segments, decoded on first use.
    segment_pages: Mutex<HashMap<u64, Arc<Vec<PageLoc>>>>,
    next_segment: AtomicU64,
    next_checkpoint: AtomicU64,
    /// Serialises commits so that the dedup map and the index agree.
    commit_lock: Mutex<()>,
    open_segments: Mutex<HashMap<u64, Arc<File>>>,
    zstd_level: i32,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `root` for writing, creating it if missing. One process at a time.
    pub fn open(root: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with_level(root, 1)
    }

    /// Opens for writing with a zstd level for new pages.
    pub fn open_with_level(root: &Path, zstd_level: i32) -> Result<Arc<Self>, StoreError> {
        let segments_dir = root.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(|e| StoreError::io(&segments_dir, e))?;
        check_or_write_version(root, true)?;

        let index_path = root.join("index.redb");
        let idx = |source: redb::Error| StoreError::Index {
            path: index_path.clone(),
            source,
        };
        let db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(&index_path)
            .map_err(|e| idx(e.into()))?;
        let txn = db.begin_write().map_err(|e| idx(e.into()))?;
        {
            txn.open_table(SEGMENTS).map_err(|e| idx(e.into()))?;
            txn.open_table(CHECKPOINTS).map_err(|e| idx(e.into()))?;
            txn.open_table(PAGEMAPS).map_err(|e| idx(e.into()))?;
        }
        txn.commit().map_err(|e| idx(e.into()))?;
        Self::load(root, Db::Write(db), zstd_level)
    }

    /// Opens an existing store read-only; works while a server has it open for writing.
    ///
    /// An index left unclean by a server that was killed (SIGKILL, power loss) cannot be
    /// opened read-only: redb repairs only in a read-write open. Such an index is repaired
    /// once here by a read-write open and close (redb keeps every committed transaction, so
    /// committed checkpoints survive and a half-received one stays unlisted), then opened
    /// read-only again. If a running server holds the index, [`StoreError::InUse`] says so.
    pub fn open_read_only(root: &Path) -> Result<Arc<Self>, StoreError> {
        check_or_write_version(root, false)?;
        let index_path = root.join("index.redb");
        let idx = |source: redb::DatabaseError| StoreError::Index {
            path: index_path.clone(),
            source: source.into(),
        };
        let db = match open_index_read_only(&index_path) {
            Err(redb::DatabaseError::RepairAborted) => {
                tracing::warn!(
                    store = %root.display(),
                    index = %index_path.display(),
                    "index was not closed cleanly (server killed?); repairing it with a read-write open"
                );
                repair_index(root, &index_path)?;
                open_index_read_only(&index_path).map_err(idx)?
            }
            other => other.map_err(idx)?,
        };
        Self::load(root, Db::Read(db), 1)
    }

    /// Closes the index, returning any error redb reports (dropping the store closes it too,
    /// ignoring errors). A cleanly closed index opens read-only without repair.
    pub fn close(self) -> Result<(), StoreError> {
        let idx = |source: redb::DatabaseError| StoreError::Index {
            path: self.index_path.clone(),
            source: source.into(),
        };
        match self.db {
            Db::Write(d) => d.close().map_err(idx),
            Db::Read(d) => d.close().map_err(idx),
        }
    }

    fn load(root: &Path, db: Db, zstd_level: i32) -> Result<Arc<Self>, StoreError> {
        let segments_dir = root.join("segments");
        let index_path = root.join("index.redb");
        let idx = |source: redb::Error| StoreError::Index {
            path: index_path.clone(),
            source,
        };
        let writable = matches!(db, Db::Write(_));
        let mut known = HashIndex::default();
        let mut committed_segments = HashMap::new();
        let mut next_checkpoint = 1;
        {
            let read = db.begin_read().map_err(|e| idx(e.into()))?;
            let segs = read.open_table(SEGMENTS).map_err(|e| idx(e.into()))?;
            for row in segs.iter().map_err(|e| idx(e.into()))? {
                let (k, v) = row.map_err(|e| idx(e.into()))?;
                let (len, pages) = segment::decode_page_list(k.value(), v.value())?;
                // Only a writer deduplicates; readers skip building the hash map.
                if writable {
                    for (i, loc) in pages.iter().enumerate() {
                        known
                            .entry(loc.hash)
                            .or_insert(page_ref(k.value(), i as u32));
                    }
                }
                committed_segments.insert(k.value(), len);
            }
            let cps = read.open_table(CHECKPOINTS).map_err(|e| idx(e.into()))?;
            if let Some((k, _)) = cps.last().map_err(|e| idx(e.into()))? {
                next_checkpoint = k.value() + 1;
            }
        }

        // Segments no committed transaction names belong to sessions cut short: remove them.
        let mut next_segment = committed_segments.keys().max().map_or(1, |m| m + 1);
        let listing =
            std::fs::read_dir(&segments_dir).map_err(|e| StoreError::io(&segments_dir, e))?;
        for dirent in listing {
            let dirent = dirent.map_err(|e| StoreError::io(&segments_dir, e))?;
            let name = dirent.file_name();
            let Some(id) = name.to_str().and_then(segment::parse_segment_file_name) else {
                continue;
            };
            next_segment = next_segment.max(id + 1);
            if writable && !committed_segments.contains_key(&id) {
                tracing::info!(segment = id, "removing segment of an uncommitted session");
                let path = dirent.path();
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            }
        }

        Ok(Arc::new(Self {
            root: root.to_path_buf(),
            segments_dir,
            index_path,
            db,
            known: RwLock::new(known),
            segment_pages: Mutex::new(HashMap::new()),
            next_segment: AtomicU64::new(next_segment),
            next_checkpoint: AtomicU64::new(next_checkpoint),
            commit_lock: Mutex::new(()),
            open_segments: Mutex::new(HashMap::new()),
            zstd_level,
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn idx(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Index {
            path: self.index_path.clone(),
            source: source.into(),
        }
    }

    /// Starts receiving a new checkpoint whose holes refer to `parent`.
    pub fn begin_checkpoint(
        self: &Arc<Self>,
        parent: Option<u64>,
        peer: String,
    ) -> Result<CheckpointWriter, StoreError> {
        self.db.writer()?;
        let id = self.next_checkpoint.fetch_add(1, Ordering::Relaxed);
        Ok(CheckpointWriter::new(Arc::clone(self), id, parent, peer))
    }

    /// Peeks at the id the next checkpoint will get.
    pub fn peek_next_checkpoint(&self) -> u64 {
        self.next_checkpoint.load(Ordering::Relaxed)
    }

    /// All committed checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let table = read.open_table(CHECKPOINTS).map_err(|e| self.idx(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.idx(e))? {
            let (k, v) = row.map_err(|e| self.idx(e))?;
            out.push(decode_info(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The newest committed checkpoint.
    pub fn latest(&self) -> Result<Option<CheckpointInfo>, StoreError> {
        Ok(self.list()?.pop())
    }

    /// One committed checkpoint.
    pub fn checkpoint(&self, id: u64) -> Result<CheckpointInfo, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let table = read.open_table(CHECKPOINTS).map_err(|e| self.idx(e))?;
        let row = table.get(id).map_err(|e| self.idx(e))?;
        let row = row.ok_or(StoreError::NoCheckpoint { checkpoint: id })?;
        decode_info(id, row.value())
    }

    /// Every pagemap of a committed checkpoint, in the order they were opened.
    pub fn pagemaps(&self, checkpoint: u64) -> Result<Vec<StoredPagemap>, StoreError> {
        self.checkpoint(checkpoint)?;
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let table = read.open_table(PAGEMAPS).map_err(|e| self.idx(e))?;
        let mut out = Vec::new();
        let range = table
            .range((checkpoint, 0)..=(checkpoint, u64::MAX))
            .map_err(|e| self.idx(e))?;
        for row in range {
            let (_, v) = row.map_err(|e| self.idx(e))?;
            out.push(StoredPagemap::decode(checkpoint, v.value())?);
        }
        out.sort_by_key(|p| p.pages_id);
        Ok(out)
    }

    /// The pagemap of `dst` in a committed checkpoint, if it has one.
    pub fn pagemap(
        &self,
        checkpoint: u64,
        dst: DstId,
    ) -> Result<Option<StoredPagemap>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let table = read.open_table(PAGEMAPS).map_err(|e| self.idx(e))?;
        let row = table
            .get((checkpoint, dst.encode()))
            .map_err(|e| self.idx(e))?;
        row.map(|v| StoredPagemap::decode(checkpoint, v.value()))
            .transpose()
    }

    /// Looks up where page refs are stored (0 = zero page → `None`).
    pub fn locate_pages(&self, refs: &[u64]) -> Result<Vec<Option<PageLoc>>, StoreError> {
        let mut out = Vec::with_capacity(refs.len());
        let mut last: Option<(u64, Arc<Vec<PageLoc>>)> = None;
        for &r in refs {
            if r == 0 {
                out.push(None);
                continue;
            }
            let (segment, index) = (r >> 32, (r & 0xffff_ffff) as usize);
            let pages = match &last {
                Some((s, p)) if *s == segment => Arc::clone(p),
                _ => {
                    let p = self.page_list(segment)?;
                    last = Some((segment, Arc::clone(&p)));
                    p
                }
            };
            let loc = pages
                .get(index)
                .ok_or(StoreError::MissingPage { page: r })?;
            out.push(Some(*loc));
        }
        Ok(out)
    }

    fn page_list(&self, segment: u64) -> Result<Arc<Vec<PageLoc>>, StoreError> {
        if let Some(p) = self
            .segment_pages
            .lock()
            .expect("page list cache poisoned")
            .get(&segment)
        {
            return Ok(Arc::clone(p));
        }
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let table = read.open_table(SEGMENTS).map_err(|e| self.idx(e))?;
        let row = table.get(segment).map_err(|e| self.idx(e))?;
        let row = row.ok_or(StoreError::MissingPage {
            page: segment << 32,
        })?;
        let (_, pages) = segment::decode_page_list(segment, row.value())?;
        let pages = Arc::new(pages);
        let mut cache = self.segment_pages.lock().expect("page list cache poisoned");
        cache.insert(segment, Arc::clone(&pages));
        Ok(pages)
    }

    /// Reads page refs (0 = zero page) into `out`, 4096 bytes each.
    pub fn read_pages(&self, refs: &[u64], out: &mut [u8]) -> Result<(), StoreError> {
        assert_eq!(
            out.len(),
            refs.len() * PAGE_SIZE,
            "output must hold every page"
        );
        let locs = self.locate_pages(refs)?;
        let mut raw = Vec::with_capacity(PAGE_SIZE * 2);
        let mut dec = zstd::bulk::Decompressor::new().map_err(StoreError::Zstd)?;
        for (loc, page) in locs.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
            let Some(loc) = loc else {
                page.fill(0);
                continue;
            };
            let file = self.segment_file(loc.segment)?;
            let codec =
                segment::read_record(&file, loc.segment, loc.offset, loc.stored_len, &mut raw)?;
            let bad = |reason: String| StoreError::CorruptRecord {
                segment: loc.segment,
                offset: loc.offset,
                reason,
            };
            codec::decode_page(codec, &raw, page, &mut dec).map_err(bad)?;
        }
        Ok(())
    }

    fn segment_file(&self, id: u64) -> Result<Arc<File>, StoreError> {
        let mut cache = self.open_segments.lock().expect("segment cache poisoned");
        if let Some(f) = cache.get(&id) {
            return Ok(Arc::clone(f));
        }
        let path = self.segments_dir.join(segment::segment_file_name(id));
        let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        segment::check_header(&file, id)?;
        let file = Arc::new(file);
        cache.insert(id, Arc::clone(&file));
        Ok(file)
    }

    /// Store-wide totals.
    pub fn totals(&self) -> Result<StoreTotals, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.idx(e))?;
        let cps = read.open_table(CHECKPOINTS).map_err(|e| self.idx(e))?;
        let segs = read.open_table(SEGMENTS).map_err(|e| self.idx(e))?;
        let mut totals = StoreTotals {
            checkpoints: cps.len().map_err(|e| self.idx(e))?,
            ..StoreTotals::default()
        };
        for row in segs.iter().map_err(|e| self.idx(e))? {
            let (k, v) = row.map_err(|e| self.idx(e))?;
            let (len, count) = segment::page_list_header(k.value(), v.value())?;
            totals.segment_bytes += len;
            totals.unique_pages += count;
        }
        Ok(totals)
    }
}

fn open_index_read_only(index_path: &Path) -> Result<redb::ReadOnlyDatabase, redb::DatabaseError> {
    redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open_read_only(index_path)
}

/// Repairs an index a killed writer left unclean: a read-write open runs redb's recovery
/// (rolling back to the last durable commit), a clean close records it.
fn repair_index(root: &Path, index_path: &Path) -> Result<(), StoreError> {
    let idx = |source: redb::DatabaseError| StoreError::Index {
        path: index_path.to_path_buf(),
        source: source.into(),
    };
    let started = std::time::Instant::now();
    let db = match redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(index_path)
    {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            // A server (or another reader's repair) may have opened the index since our
            // read-only open failed; once it is repaired, a read-only open succeeds.
            for _ in 0..20 {
                if open_index_read_only(index_path).is_ok() {
                    tracing::info!(
                        store = %root.display(),
                        "index was repaired by the process that holds it"
                    );
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return Err(StoreError::InUse {
                path: root.to_path_buf(),
            });
        }
        Err(e) => return Err(idx(e)),
    };
    db.close().map_err(idx)?;
    tracing::warn!(
        store = %root.display(),
        index = %index_path.display(),
        ms = started.elapsed().as_millis() as u64,
        "index repaired: committed checkpoints kept, uncommitted sessions dropped"
    );
    Ok(())
}

fn check_or_write_version(root: &Path, create: bool) -> Result<(), StoreError> {
    let path = root.join("STORE");
    let want = format!("cryo-pagestore {STORE_VERSION}\n");
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(StoreError::Version { path, found }),
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = root.join("STORE.tmp");
            std::fs::write(&tmp, want).map_err(|e| StoreError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}
