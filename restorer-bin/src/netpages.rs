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
//! 2. **Choose the checkpoint.** `--checkpoint ID` names it. Without it, the newest
//!    committed checkpoint that holds *every* process of the tree is used: ids are walked
//!    down from the newest (HELLO tells the id the next checkpoint gets, so every committed
//!    one is below it) and a checkpoint holds a process when the server has the page under
//!    its leader's dumped stack pointer — a page the process certainly touched, so it is
//!    certainly dumped. The same check runs on an explicit `--checkpoint`.
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
/// How many checkpoint ids below the newest the default choice looks at.
const MAX_WALK: u64 = 4096;

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
        "page server {peer}: no committed checkpoint holds pages of every process {pids:?} \
         (looked for the page under each leader's stack pointer)"
    )]
    NoneHolds { peer: SocketAddr, pids: Vec<i32> },
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
    /// Connects to `peer` and selects `checkpoint`, or by default the newest checkpoint that
    /// holds every process of `procs`; checks either way that it holds them.
    pub fn connect(
        peer: SocketAddr,
        checkpoint: Option<u64>,
        procs: &[ProcessPlan],
    ) -> Result<Self, NetPagesError> {
        let (mut s, hello) = Self::open(peer)?;
        tracing::debug!(%peer, version = hello.version, next = hello.checkpoint_id, "page server hello");
        match checkpoint {
            Some(id) => {
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
                        why: "the page under its stack pointer: the checkpoint does not hold \
                              this process",
                    });
                }
            }
            None => {
                let newest = hello.checkpoint_id.saturating_sub(1);
                let lowest = newest.saturating_sub(MAX_WALK).max(1);
                let mut found = None;
                for id in (lowest..=newest).rev() {
                    if s.select(id)? && s.first_missing(procs)?.is_none() {
                        found = Some(id);
                        break;
                    }
                }
                if found.is_none() {
                    return Err(NetPagesError::NoneHolds {
                        peer,
                        pids: procs.iter().map(|p| p.pid).collect(),
                    });
                }
            }
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
