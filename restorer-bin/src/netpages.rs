//! Private pages from a page server (`restore --page-server ADDR:PORT`).
//!
//! `dumper dump --page-server` (like `criu dump --page-server`) leaves no
//! `pagemap-*.img`/`pages-*.img` in the image directory: the server holds both, keyed by
//! checkpoint and by pid (`DstId::pid`). The restorer speaks to it through
//! `cryo_pageserver::client` only:
//!
//! 1. **Connect** and send cryo's HELLO, which lets us select a checkpoint
//!    (`USE_CHECKPOINT`) and makes the server answer a GET for a page it lacks with zero
//!    pages instead of dropping the connection.
//! 2. **Choose the checkpoint.** The dumper records the id of the checkpoint it sent the
//!    pages to in `DIR/page-server-checkpoint` (`cryo_pageserver::record`); that one is used.
//!    `--checkpoint ID` names it when the directory records none (a dump through a CRIU
//!    page server or by `criu dump`); a `--checkpoint` that differs from the recorded id is
//!    refused, and so is a directory without a record and without `--checkpoint`: the
//!    pages of another dump of the same process would restore silently with the wrong
//!    registers. The chosen checkpoint must then hold *every* process of the tree: it holds
//!    a process when the server has the page under its leader's dumped stack pointer — a
//!    page the process certainly touched, so it is certainly dumped.
//! 3. **Fetch.** With a `pagemap-PID.img` in the directory, each of its runs is asked for
//!    and every page of it must arrive. Without one (the usual case), the protocol offers
//!    no query for the ranges a checkpoint holds, so every page-taking VMA is walked with
//!    GET: a reply of `n` pages is a present run, an empty reply means the page was not
//!    dumped (never touched) and the walk steps one page on. The fetched runs are then
//!    written by the same filling path as local pages (`UFFDIO_COPY` for large anonymous
//!    ranges, `process_vm_writev` otherwise). The walk costs one round trip per absent
//!    page (about 60 µs on loopback against a debug build: a 256 MiB mapping with two
//!    touched pages takes 68k GETs, 4 s on one session); walks of more than 16k pages
//!    are cut into 16 MiB chunks shared by 4 sessions (2 s for that case on 2 cores),
//!    and more than 16k GETs for one process is logged as a warning.
//!
//! Sessions never send CLOSE: on a cryo server, HELLO opens a checkpoint writer, and
//! CLOSE would commit an empty checkpoint that would become the newest. Dropping the
//! connection discards it (the server logs each such session as aborted).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cryo_format::PagemapId;
use cryo_format::pagemap::Pagemap;
use cryo_pageserver::client::{Client, ClientError, Hello};
use cryo_pageserver::record::{self, CheckpointRecord, RecordError};

use crate::memory::PAGE;
use crate::plan::{ProcessPlan, vma_takes_pages};

/// Most pages asked for in one GET (the server's own cap).
const GET_PAGES: u64 = 1024;
/// Socket timeout of every request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Sessions a large walk is spread over (the walk waits on round trips, not on CPU).
const WALKERS: usize = 4;
/// Pages to walk above which more than one session is used.
const PARALLEL_FROM: u64 = 16 * 1024;
/// Pages of one walk chunk.
const CHUNK_PAGES: u64 = 4096;
/// GETs for one process above which the walk is reported as slow.
const SLOW_WALK: u64 = 16 * 1024;

/// Errors of fetching pages from a page server; all name the peer.
#[derive(Debug, thiserror::Error)]
pub enum NetPagesError {
    #[error("page server {peer}: {during}")]
    Client {
        peer: SocketAddr,
        during: String,
        #[source]
        source: ClientError,
    },
    #[error("page server {peer}: checkpoint {checkpoint} does not exist")]
    NoCheckpoint { peer: SocketAddr, checkpoint: u64 },
    #[error(
        "{dir} records no page-server checkpoint ({file} is missing: dumped by CRIU or through \
         a CRIU page server?); pass --checkpoint ID to name the checkpoint holding this dump's \
         pages"
    )]
    NoRecord { dir: String, file: &'static str },
    #[error(
        "--checkpoint {given} does not match checkpoint {recorded} recorded in {path} (dumped \
         through {recorded_peer}): its pages belong to another dump"
    )]
    Mismatch {
        given: u64,
        recorded: u64,
        recorded_peer: SocketAddr,
        path: String,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(
        "page server {peer}: checkpoint {checkpoint} has no page of pid {pid} at vaddr \
         {vaddr:#x} ({why})"
    )]
    Missing {
        peer: SocketAddr,
        checkpoint: u64,
        pid: i32,
        vaddr: u64,
        why: &'static str,
    },
    #[error("process {pid}: reading {path}")]
    Pagemap {
        pid: i32,
        path: String,
        #[source]
        source: cryo_format::pagemap::PagemapError,
    },
}

/// The pages of one process, fetched from the server: `(vaddr, bytes)` runs, sorted.
#[derive(Debug, Default)]
pub struct FetchedPages {
    pub runs: Vec<(u64, Vec<u8>)>,
}

impl FetchedPages {
    /// Number of pages held.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|(_, b)| b.len() as u64 / PAGE).sum()
    }

    fn push(&mut self, vaddr: u64, bytes: &[u8]) {
        if let Some((at, last)) = self.runs.last_mut()
            && *at + last.len() as u64 == vaddr
        {
            last.extend_from_slice(bytes);
            return;
        }
        self.runs.push((vaddr, bytes.to_vec()));
    }
}

/// A GET session on one checkpoint of a page server.
#[derive(Debug)]
pub struct PageServer {
    client: Client,
    peer: SocketAddr,
    checkpoint: u64,
    buf: Vec<u8>,
}

impl PageServer {
    /// Connects to `peer` and selects the checkpoint of the dump in `dir` (see
    /// [`checkpoint_of`]); checks that it holds every process of `procs`.
    pub fn connect(
        peer: SocketAddr,
        dir: &Path,
        checkpoint: Option<u64>,
        procs: &[ProcessPlan],
    ) -> Result<Self, NetPagesError> {
        let id = checkpoint_of(dir, peer, checkpoint)?;
        let (mut s, hello) = Self::open(peer)?;
        tracing::debug!(%peer, version = hello.version, next = hello.checkpoint_id, "page server hello");
        if !s.select(id)? {
            return Err(NetPagesError::NoCheckpoint {
                peer,
                checkpoint: id,
            });
        }
        if let Some(pid) = s.first_missing(procs)? {
            let vaddr = stack_page(&procs[pid]);
            return Err(NetPagesError::Missing {
                peer,
                checkpoint: id,
                pid: procs[pid].pid,
                vaddr,
                why: "the page under its stack pointer: the checkpoint does not hold this \
                      process",
            });
        }
        tracing::info!(%peer, checkpoint = s.checkpoint, "pages come from the page server");
        Ok(s)
    }

    /// Connects and negotiates cryo's extensions.
    fn open(peer: SocketAddr) -> Result<(Self, Hello), NetPagesError> {
        let client =
            Client::connect_timeout(peer, TIMEOUT).map_err(|source| NetPagesError::Client {
                peer,
                during: "connecting".into(),
                source,
            })?;
        let mut s = PageServer {
            client,
            peer,
            checkpoint: 0,
            buf: vec![0; (GET_PAGES * PAGE) as usize],
        };
        let hello = s.client.hello().map_err(|source| NetPagesError::Client {
            peer,
            during: "negotiating cryo extensions (HELLO); a CRIU page server cannot serve \
                     this restore"
                .into(),
            source,
        })?;
        Ok((s, hello))
    }

    /// Ends the session with CLOSE, so the server sees a clean end of a read-only session
    /// (it commits nothing for it). A failure here cannot hurt the restore: it is logged.
    pub fn close(self) {
        let peer = self.peer;
        if let Err(e) = self.client.close() {
            tracing::debug!(%peer, error = %e, "closing a page-server session");
        }
    }

    /// Another session on the same checkpoint, for a parallel walk.
    fn another(&self) -> Result<Self, NetPagesError> {
        let (mut s, _) = Self::open(self.peer)?;
        if !s.select(self.checkpoint)? {
            return Err(NetPagesError::NoCheckpoint {
                peer: self.peer,
                checkpoint: self.checkpoint,
            });
        }
        Ok(s)
    }

    /// Fetches the pages of every process of `procs` (see [`PageServer::fetch`]). Walks
    /// without a pagemap are latency-bound (one GET per absent page), so large ones are
    /// cut into chunks spread over up to [`WALKERS`] sessions.
    pub fn fetch_all(
        &mut self,
        dir: &Path,
        procs: &[ProcessPlan],
    ) -> Result<Vec<FetchedPages>, NetPagesError> {
        let started = Instant::now();
        let mut out: Vec<Option<FetchedPages>> = Vec::new();
        // (process index, pid, start, end) of every range to walk, in address order.
        let mut chunks = Vec::new();
        for (i, p) in procs.iter().enumerate() {
            if dir.join(PagemapId::Pid(p.pid as u32).file_name()).exists() {
                out.push(Some(self.fetch(dir, p)?));
                continue;
            }
            out.push(None);
            for vma in p.mm.vmas.iter().filter(|v| vma_takes_pages(v)) {
                let mut at = vma.start;
                while at < vma.end {
                    let end = vma.end.min(at + CHUNK_PAGES * PAGE);
                    chunks.push((i, p.pid, at, end));
                    at = end;
                }
            }
        }
        let walk_pages: u64 = chunks.iter().map(|c| (c.3 - c.2) / PAGE).sum();
        let walkers = if walk_pages > PARALLEL_FROM {
            WALKERS.min(chunks.len())
        } else {
            1
        };
        let mut sessions = Vec::new();
        for _ in 1..walkers {
            sessions.push(self.another()?);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let walk = |s: &mut PageServer| -> Result<Vec<(usize, FetchedPages, u64)>, NetPagesError> {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(_, pid, start, end)) = chunks.get(k) else {
                    return Ok(done);
                };
                let mut got = FetchedPages::default();
                let requests = s.walk_range(pid, start, end, &mut got)?;
                done.push((k, got, requests));
            }
        };
        let results = std::thread::scope(|scope| {
            let others: Vec<_> = sessions
                .iter_mut()
                .map(|s| scope.spawn(|| walk(s)))
                .collect();
            let mut all = vec![walk(self)];
            all.extend(
                others
                    .into_iter()
                    .map(|h| h.join().expect("page walker panicked")),
            );
            all
        });
        for s in sessions {
            s.close();
        }
        let mut pieces = Vec::new();
        for r in results {
            pieces.extend(r?);
        }
        pieces.sort_unstable_by_key(|p| p.0);
        let mut requests = vec![0u64; procs.len()];
        for (k, got, n) in pieces {
            let i = chunks[k].0;
            requests[i] += n;
            let dst = out[i].get_or_insert_with(FetchedPages::default);
            for (vaddr, bytes) in got.runs {
                dst.push(vaddr, &bytes);
            }
        }
        let out: Vec<FetchedPages> = out.into_iter().map(Option::unwrap_or_default).collect();
        for ((p, f), requests) in procs.iter().zip(&out).zip(requests) {
            if requests > SLOW_WALK {
                tracing::warn!(
                    peer = %self.peer,
                    pid = p.pid,
                    requests,
                    "sparse memory walked page by page: the page-server protocol has no \
                     query for the ranges a checkpoint holds"
                );
            }
            tracing::debug!(
                peer = %self.peer,
                checkpoint = self.checkpoint,
                pid = p.pid,
                pages = f.pages(),
                runs = f.runs.len(),
                requests,
                "pages fetched"
            );
        }
        tracing::debug!(
            walkers,
            walk_pages,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "page walk done"
        );
        Ok(out)
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Selects `id` for later GETs; returns whether it exists.
    fn select(&mut self, id: u64) -> Result<bool, NetPagesError> {
        let found = self
            .client
            .use_checkpoint(id)
            .map_err(|source| NetPagesError::Client {
                peer: self.peer,
                during: format!("selecting checkpoint {id}"),
                source,
            })?;
        if found {
            self.checkpoint = id;
        }
        Ok(found)
    }

    /// Index of the first process whose stack page the selected checkpoint lacks.
    fn first_missing(&mut self, procs: &[ProcessPlan]) -> Result<Option<usize>, NetPagesError> {
        for (i, p) in procs.iter().enumerate() {
            if p.zombie.is_some() {
                continue;
            }
            if self.get(p.pid, stack_page(p), 1)? == 0 {
                tracing::debug!(
                    checkpoint = self.checkpoint,
                    pid = p.pid,
                    "checkpoint lacks the process"
                );
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// One GET of up to `nr` pages into `self.buf`; returns the pages that arrived.
    fn get(&mut self, pid: i32, vaddr: u64, nr: u64) -> Result<u64, NetPagesError> {
        let len = (nr.min(GET_PAGES) * PAGE) as usize;
        self.client
            .get(pid as u64, vaddr, &mut self.buf[..len])
            .map_err(|source| NetPagesError::Client {
                peer: self.peer,
                during: format!(
                    "GET pid {pid} vaddr {vaddr:#x} in checkpoint {}",
                    self.checkpoint
                ),
                source,
            })
    }

    /// Fetches every dumped private page of `proc`: the runs of `DIR/pagemap-PID.img` if
    /// there is one (each page must arrive), else whatever the server holds inside the
    /// page-taking VMAs.
    pub fn fetch(&mut self, dir: &Path, proc: &ProcessPlan) -> Result<FetchedPages, NetPagesError> {
        let started = Instant::now();
        let pid = proc.pid;
        let path = dir.join(PagemapId::Pid(pid as u32).file_name());
        let mut out = FetchedPages::default();
        let mut requests = 0u64;
        if path.exists() {
            let pagemap = Pagemap::open(&path).map_err(|source| NetPagesError::Pagemap {
                pid,
                path: path.display().to_string(),
                source,
            })?;
            for run in pagemap.runs() {
                let mut at = run.vaddr;
                while at < run.end() {
                    requests += 1;
                    let n = self.get(pid, at, (run.end() - at) / PAGE)?;
                    if n == 0 {
                        return Err(NetPagesError::Missing {
                            peer: self.peer,
                            checkpoint: self.checkpoint,
                            pid,
                            vaddr: at,
                            why: "the pagemap in the image directory lists it",
                        });
                    }
                    out.push(at, &self.buf[..(n * PAGE) as usize]);
                    at += n * PAGE;
                }
            }
        } else {
            for vma in proc.mm.vmas.iter().filter(|v| vma_takes_pages(v)) {
                requests += self.walk_range(pid, vma.start, vma.end, &mut out)?;
            }
        }
        tracing::debug!(
            peer = %self.peer,
            checkpoint = self.checkpoint,
            pid,
            pages = out.pages(),
            runs = out.runs.len(),
            requests,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "pages fetched"
        );
        Ok(out)
    }

    /// Collects the pages the server holds in `[start, end)`; returns the GETs it took.
    fn walk_range(
        &mut self,
        pid: i32,
        start: u64,
        end: u64,
        out: &mut FetchedPages,
    ) -> Result<u64, NetPagesError> {
        let mut requests = 0;
        let mut at = start;
        while at < end {
            requests += 1;
            let n = self.get(pid, at, (end - at) / PAGE)?;
            if n == 0 {
                at += PAGE;
                continue;
            }
            out.push(at, &self.buf[..(n * PAGE) as usize]);
            at += n * PAGE;
        }
        Ok(requests)
    }
}

/// The checkpoint holding the pages of the dump in `dir`: the one `dir` records, or
/// `given` (`--checkpoint`) when it records none. Refuses a `given` that differs from the
/// record, and a directory without a record when nothing is given (never guesses).
pub fn checkpoint_of(
    dir: &Path,
    peer: SocketAddr,
    given: Option<u64>,
) -> Result<u64, NetPagesError> {
    match (CheckpointRecord::read(dir)?, given) {
        (Some(rec), Some(given)) if rec.checkpoint != given => Err(NetPagesError::Mismatch {
            given,
            recorded: rec.checkpoint,
            recorded_peer: rec.peer,
            path: dir.join(record::FILE).display().to_string(),
        }),
        (Some(rec), _) => {
            if rec.peer != peer {
                tracing::warn!(
                    %peer,
                    recorded = %rec.peer,
                    checkpoint = rec.checkpoint,
                    "the dump went to another address; reading its checkpoint id from this one"
                );
            }
            Ok(rec.checkpoint)
        }
        (None, Some(given)) => Ok(given),
        (None, None) => Err(NetPagesError::NoRecord {
            dir: dir.display().to_string(),
            file: record::FILE,
        }),
    }
}

/// The page under the leader's dumped stack pointer.
fn stack_page(p: &ProcessPlan) -> u64 {
    let sp = p.threads[0]
        .core
        .thread_info
        .as_ref()
        .map_or(0, |t| t.gpregs.sp);
    sp & !(PAGE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_comes_from_the_record() {
        let dir = std::env::temp_dir().join(format!("cryo-netpages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let peer: SocketAddr = "127.0.0.1:27027".parse().unwrap();
        let err = checkpoint_of(&dir, peer, None).unwrap_err().to_string();
        assert!(err.contains("--checkpoint ID"), "{err}");
        assert_eq!(checkpoint_of(&dir, peer, Some(7)).unwrap(), 7);
        CheckpointRecord {
            checkpoint: 3,
            peer,
        }
        .write(&dir)
        .unwrap();
        assert_eq!(checkpoint_of(&dir, peer, None).unwrap(), 3);
        assert_eq!(checkpoint_of(&dir, peer, Some(3)).unwrap(), 3);
        let err = checkpoint_of(&dir, peer, Some(7)).unwrap_err().to_string();
        assert!(
            err.contains("--checkpoint 7") && err.contains("checkpoint 3"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fetched_runs_merge_when_contiguous() {
        let mut f = FetchedPages::default();
        f.push(0x1000, &[1; 4096]);
        f.push(0x2000, &[2; 4096]);
        f.push(0x4000, &[3; 4096]);
        assert_eq!(f.runs.len(), 2);
        assert_eq!(f.runs[0].0, 0x1000);
        assert_eq!(f.runs[0].1.len(), 8192);
        assert_eq!(f.pages(), 3);
    }
}
