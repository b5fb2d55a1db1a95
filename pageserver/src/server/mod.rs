//! The page server: accepts CRIU (and cryo) page-server connections and feeds the store.
//!
//! Each connection is one session, run as its own tokio task; many run at once. A session that
//! sends pages is one checkpoint (see [`crate::store`]): it is committed when the client sends
//! CLOSE, and CLOSE is answered only after the commit is durable. A session that only GETs
//! commits nothing.
//!
//! The reactor only moves bytes. Hashing, compression and segment writes run on a blocking
//! worker per session (which fans batches out over rayon); page batches reach it through a
//! bounded channel, so a slow disk slows the socket reads instead of growing memory. Index
//! reads (OPEN2's parent check, GET) go through `spawn_blocking`.
//!
//! A malformed or hostile stream — bad header, unknown command, a lying or absurd `nr_pages`,
//! a peer that disconnects mid-page, pages for no open pagemap — ends only its own session,
//! with the reason logged; its partial checkpoint is discarded.

mod lazy;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::protocol::{
    self, CRYO_EXT_VERSION, Command, DstId, HEADER_SIZE, HeaderLayout, HelloReply,
    LEGACY_HEADER_SIZE, PAGE_SIZE, PE_PRESENT, ProtocolError, Request, WireHeader,
};
use crate::store::{CheckpointInfo, PagemapIndex, Store, StoreError, StoredPagemap};
use worker::{Job, ingest_worker};

/// Pages handed to the ingest worker at a time.
pub const BATCH_PAGES: usize = 1024;

/// How a session's parent checkpoint is chosen when the client does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentPolicy {
    /// No parent: OPEN2 and PARENT answer 0, like a CRIU server without `--prev-images-dir`.
    #[default]
    None,
    /// The newest checkpoint committed when the session starts.
    Latest,
}

/// Server settings shared by all sessions.
#[derive(Debug)]
pub struct ServerConfig {
    pub store: Arc<Store>,
    pub parent_policy: ParentPolicy,
    /// Checkpoint GETs read from when the client does not select one (`None` = latest).
    pub serve_checkpoint: Option<u64>,
    /// A session that sends nothing for this long is ended (a dump may pause between
    /// processes, so this is generous).
    pub idle_timeout: Duration,
}

/// Default [`ServerConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Most pages one GET reply carries (CRIU's server answers at most one pipe's worth, 4 MiB).
pub const MAX_GET_PAGES: u64 = 1024;

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer {peer}: bad request header")]
    Protocol {
        peer: SocketAddr,
        #[source]
        source: ProtocolError,
    },
    #[error("peer {peer}: connection closed without CLOSE; the checkpoint is discarded")]
    NoClose { peer: SocketAddr },
    #[error("peer {peer}: disconnected in the middle of {missing} pages at vaddr {vaddr:#x}")]
    Truncated {
        peer: SocketAddr,
        vaddr: u64,
        missing: u64,
    },
    #[error("peer {peer}: socket I/O")]
    Io {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer}: {what} before any pagemap was opened")]
    NoPagemap {
        peer: SocketAddr,
        what: &'static str,
    },
    #[error("peer {peer}: {what} is a cryo extension and the peer did not send HELLO")]
    NotNegotiated {
        peer: SocketAddr,
        what: &'static str,
    },
    #[error("peer {peer}: GET pid {pid} vaddr {vaddr:#x}: no such page in checkpoint {checkpoint}")]
    GetMissing {
        peer: SocketAddr,
        pid: u64,
        vaddr: u64,
        checkpoint: u64,
    },
    #[error("peer {peer}: GET with no checkpoint in the store")]
    NothingToServe { peer: SocketAddr },
    #[error("peer {peer}: checkpoint {checkpoint}: store")]
    Store {
        peer: SocketAddr,
        checkpoint: u64,
        #[source]
        source: StoreError,
    },
}

/// How a session ended normally.
#[derive(Debug)]
pub enum SessionEnd {
    /// CLOSE committed this checkpoint.
    Committed(CheckpointInfo),
    /// CLOSE with nothing to commit (e.g. a GET-only session).
    Closed,
}

/// Accepts connections forever (or one, with `single_session`), one task per session.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    single_session: bool,
) -> std::io::Result<Option<Result<SessionEnd, SessionError>>> {
    // The sender is dropped at once: no shutdown request ever arrives.
    let (_, stop) = watch::channel(0);
    serve_until(listener, config, single_session, stop, Duration::ZERO).await
}

/// Default grace period of [`serve_until`] for sessions in flight at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Like [`serve`], until `stop` counts a shutdown request (e.g. a signal).
///
/// At the first request the listener is closed and sessions in flight get `grace` to end on
/// their own (a client sending CLOSE still gets its checkpoint committed). Sessions still
/// running after `grace`, or at a second request, are aborted: their checkpoints are
/// discarded, never listed (only CLOSE commits). When this returns, every session task has
/// ended; their ingest workers end on their own as their job channels close (a runtime
/// shutdown waits for them), after which the store can be closed cleanly.
pub async fn serve_until(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    single_session: bool,
    mut stop: watch::Receiver<u32>,
    grace: Duration,
) -> std::io::Result<Option<Result<SessionEnd, SessionError>>> {
    let mut sessions: JoinSet<Result<SessionEnd, SessionError>> = JoinSet::new();
    let mut accepted_one = false;
    loop {
        tokio::select! {
            () = requests_reached(&mut stop, 1) => break,
            accepted = listener.accept(), if !(single_session && accepted_one) => {
                let (stream, peer) = accepted?;
                tracing::info!(%peer, "session started");
                let config = Arc::clone(&config);
                sessions.spawn(async move { handle_connection(stream, peer, &config).await });
                accepted_one = true;
            }
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                let result = joined.expect("session task panicked");
                if single_session {
                    return Ok(Some(result));
                }
            }
        }
    }

    let local = listener.local_addr().ok();
    drop(listener);
    tracing::info!(
        listen = ?local,
        in_flight = sessions.len(),
        grace_ms = grace.as_millis() as u64,
        "shutdown requested: no longer accepting sessions"
    );
    let mut last = None;
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    while !sessions.is_empty() {
        tokio::select! {
            Some(joined) = sessions.join_next() => {
                if let Ok(result) = joined {
                    last = Some(result);
                }
            }
            () = &mut deadline => {
                tracing::warn!(
                    aborted = sessions.len(),
                    "grace period over: aborting sessions in flight; their checkpoints are discarded"
                );
                break;
            }
            () = requests_reached(&mut stop, 2) => {
                tracing::warn!(
                    aborted = sessions.len(),
                    "second shutdown request: aborting sessions in flight; their checkpoints are discarded"
                );
                break;
            }
        }
    }
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
    Ok(if single_session { last } else { None })
}

/// Returns once `stop` has counted `n` requests; never if its sender is gone before that.
async fn requests_reached(stop: &mut watch::Receiver<u32>, n: u32) {
    loop {
        if *stop.borrow_and_update() >= n {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs one session on an accepted connection and logs how it ended.
pub async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ServerConfig,
) -> Result<SessionEnd, SessionError> {
    let result = run_session(stream, peer, config).await;
    log_end(peer, &result);
    result
}

fn log_end(peer: SocketAddr, result: &Result<SessionEnd, SessionError>) {
    match result {
        Ok(SessionEnd::Committed(info)) => {
            let s = &info.stats;
            tracing::info!(
                %peer,
                checkpoint = info.id,
                parent = ?info.parent,
                pages = s.pages_received,
                zero = s.zero_pages,
                dedup = s.dedup_pages,
                new = s.new_pages,
                stored_bytes = s.stored_bytes,
                ratio = format_args!("{:.2}", s.reduction_ratio()),
                mib_per_s = format_args!("{:.1}", s.mib_per_s()),
                "checkpoint committed"
            );
        }
        Ok(SessionEnd::Closed) => tracing::info!(%peer, "session closed"),
        Err(e) => {
            let chain = error_chain(e);
            tracing::warn!(%peer, reason = %chain, "session aborted");
        }
    }
}

/// Renders an error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the next read from the peer gave.
enum Incoming {
    Request(Request),
    /// The peer hung up before sending a byte (a port probe): nothing happened.
    HungUpAtOnce,
    /// The stream ended, possibly inside a header.
    Ended,
}

/// A stored pagemap with its address index, as GETs use it.
type IndexedPagemap = (StoredPagemap, PagemapIndex);

struct Session<'a> {
    peer: SocketAddr,
    config: &'a ServerConfig,
    stream: TcpStream,
    cryo: bool,
    layout: Option<HeaderLayout>,
    checkpoint: Option<u64>,
    parent: Option<u64>,
    parent_chosen: bool,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    current: Option<DstId>,
    /// Whether any pagemap was opened: a session that only read (GET) commits nothing.
    opened: bool,
    read_from: Option<u64>,
    pagemap_cache: HashMap<(u64, DstId), Option<Arc<IndexedPagemap>>>,
}

async fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ServerConfig,
) -> Result<SessionEnd, SessionError> {
    let _ = stream.set_nodelay(true);
    let mut s = Session {
        peer,
        config,
        stream,
        cryo: false,
        layout: None,
        checkpoint: None,
        parent: None,
        parent_chosen: false,
        jobs: None,
        worker: None,
        free: Arc::default(),
        current: None,
        opened: false,
        read_from: None,
        pagemap_cache: HashMap::new(),
    };
    let result = s.run().await;
    // Dropping the job sender ends the worker; its writer (if not committed) removes its segment.
    s.jobs = None;
    if let Some(w) = s.worker.take() {
        let _ = w.await;
    }
    result
}

impl Session<'_> {
    async fn run(&mut self) -> Result<SessionEnd, SessionError> {
        loop {
            let req = match self.read_request().await? {
                Incoming::Request(req) => req,
                Incoming::HungUpAtOnce => return Ok(SessionEnd::Closed),
                Incoming::Ended => return Err(SessionError::NoClose { peer: self.peer }),
            };
            tracing::trace!(peer = %self.peer, ?req, "request");
            if let Some(end) = self.handle(req).await? {
                return Ok(end);
            }
        }
    }

    /// Reads and parses one header in the session's layout (decided by the first one).
    async fn read_request(&mut self) -> Result<Incoming, SessionError> {
        let io = |source| SessionError::Io {
            peer: self.peer,
            source,
        };
        let mut head = [0u8; HEADER_SIZE];
        let first = &mut head[..LEGACY_HEADER_SIZE];
        let idle = self.config.idle_timeout;
        match read_full(&mut self.stream, first, idle).await.map_err(io)? {
            // A peer that hangs up before its first byte (a port probe) did nothing.
            0 if self.layout.is_none() => return Ok(Incoming::HungUpAtOnce),
            n if n < LEGACY_HEADER_SIZE => return Ok(Incoming::Ended),
            _ => {}
        }
        let layout = *self.layout.get_or_insert_with(|| {
            let first: &[u8; LEGACY_HEADER_SIZE] =
                head[..LEGACY_HEADER_SIZE].try_into().expect("24");
            protocol::detect_layout(first)
        });
        let parsed = match layout {
            HeaderLayout::Legacy => {
                let legacy = head[..LEGACY_HEADER_SIZE].try_into().expect("24 bytes");
                protocol::parse_legacy_header(legacy)
            }
            HeaderLayout::Criu42 => {
                let rest = &mut head[LEGACY_HEADER_SIZE..];
                if read_full(&mut self.stream, rest, idle).await.map_err(io)? < rest.len() {
                    return Ok(Incoming::Ended);
                }
                protocol::parse_header(&head)
            }
        };
        parsed
            .map(Incoming::Request)
            .map_err(|source| SessionError::Protocol {
                peer: self.peer,
                source,
            })
    }

    /// A header to send back, in the session's layout.
    fn reply_header(&self, head: WireHeader) -> Vec<u8> {
        match self.layout {
            Some(HeaderLayout::Legacy) => head.to_legacy_bytes().to_vec(),
            _ => head.to_bytes().to_vec(),
        }
    }

    async fn handle(&mut self, req: Request) -> Result<Option<SessionEnd>, SessionError> {
        match req.command {
            Command::Open => self.open(self.dst(&req)?).await?,
            Command::Open2 => {
                let dst = self.dst(&req)?;
                self.open(dst).await?;
                let has = self.parent_has(dst).await?;
                self.reply(&[u8::from(has)]).await?;
            }
            Command::Parent => {
                let has = self.parent_has(self.dst(&req)?).await?;
                self.reply(&i32::from(has).to_le_bytes()).await?;
            }
            Command::Add | Command::Hole | Command::AddF { .. } => self.entry(req).await?,
            Command::Get => self.get(req).await?,
            Command::Close | Command::ForceClose => return self.close().await.map(Some),
            Command::CryoHello => {
                self.cryo = true;
                self.ensure_checkpoint().await?;
                let reply = HelloReply {
                    version: U32::new(CRYO_EXT_VERSION),
                    reserved: U32::new(0),
                    checkpoint_id: U64::new(self.checkpoint.unwrap_or(0)),
                };
                self.reply(reply.as_bytes()).await?;
            }
            Command::CryoSetParent => {
                self.require_cryo("SET_PARENT")?;
                let found = self.choose_parent(req.dst_id).await?;
                self.reply(&u32::from(!found).to_le_bytes()).await?;
            }
            Command::CryoUseCheckpoint => {
                self.require_cryo("USE_CHECKPOINT")?;
                let store = Arc::clone(&self.config.store);
                let id = req.dst_id;
                let found = self
                    .blocking(move || match id {
                        u64::MAX => store.latest().map(|l| l.map(|c| c.id)),
                        id => store
                            .checkpoint(id)
                            .map(|c| Some(c.id))
                            .or_else(|e| match e {
                                StoreError::NoCheckpoint { .. } => Ok(None),
                                e => Err(e),
                            }),
                    })
                    .await?;
                if found.is_some() {
                    self.read_from = found;
                }
                self.reply(&u32::from(found.is_none()).to_le_bytes())
                    .await?;
            }
        }
        Ok(None)
    }

    fn dst(&self, req: &Request) -> Result<DstId, SessionError> {
        req.dst().map_err(|source| SessionError::Protocol {
            peer: self.peer,
            source,
        })
    }

    fn require_cryo(&self, what: &'static str) -> Result<(), SessionError> {
        if self.cryo {
            Ok(())
        } else {
            Err(SessionError::NotNegotiated {
                peer: self.peer,
                what,
            })
        }
    }

    async fn reply(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| SessionError::Io {
                peer: self.peer,
                source,
            })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SessionError> {
        let checkpoint = self.checkpoint.unwrap_or(0);
        tokio::task::spawn_blocking(f)
            .await
            .expect("store task panicked")
            .map_err(|source| SessionError::Store {
                peer: self.peer,
                checkpoint,
                source,
            })
    }

    /// Picks the parent: `raw` 0 = none, `u64::MAX` = latest, else that id. Returns whether
    /// the requested parent exists.
    async fn choose_parent(&mut self, raw: u64) -> Result<bool, SessionError> {
        let store = Arc::clone(&self.config.store);
        let parent = self
            .blocking(move || match raw {
                0 => Ok(Some(None)),
                u64::MAX => store.latest().map(|l| Some(l.map(|c| c.id))),
                id => match store.checkpoint(id) {
                    Ok(c) => Ok(Some(Some(c.id))),
                    Err(StoreError::NoCheckpoint { .. }) => Ok(None),
                    Err(e) => Err(e),
                },
            })
            .await?;
        let Some(parent) = parent else {
            return Ok(false);
        };
        self.parent = parent;
        self.parent_chosen = true;
        if self.jobs.is_some() {
            self.send(Job::SetParent(parent)).await?;
        }
        Ok(true)
    }

    async fn ensure_checkpoint(&mut self) -> Result<(), SessionError> {
        if self.jobs.is_some() {
            return Ok(());
        }
        if !self.parent_chosen && self.config.parent_policy == ParentPolicy::Latest {
            self.choose_parent(u64::MAX).await?;
        }
        let writer = self
            .config
            .store
            .begin_checkpoint(self.parent, self.peer.to_string())
            .map_err(|source| SessionError::Store {
                peer: self.peer,
                checkpoint: 0,
                source,
            })?;
        self.checkpoint = Some(writer.id());
        let (tx, rx) = mpsc::channel(3);
        let free = Arc::clone(&self.free);
        self.worker = Some(tokio::task::spawn_blocking(move || {
            ingest_worker(writer, rx, free)
        }));
        self.jobs = Some(tx);
        Ok(())
    }

    async fn send(&mut self, job: Job) -> Result<(), SessionError> {
        let jobs = self.jobs.as_ref().expect("checkpoint started before jobs");
        if jobs.send(job).await.is_err() {
            // The worker stopped after a store error; the commit reports it.
            tracing::debug!(peer = %self.peer, "ingest worker gone");
        }
        Ok(())
    }

    async fn open(&mut self, dst: DstId) -> Result<(), SessionError> {
        self.ensure_checkpoint().await?;
        self.current = Some(dst);
        self.opened = true;
        self.send(Job::Open(dst)).await
    }

    async fn parent_has(&mut self, dst: DstId) -> Result<bool, SessionError> {
        if !self.parent_chosen && self.config.parent_policy == ParentPolicy::Latest {
            self.choose_parent(u64::MAX).await?;
        }
        let Some(parent) = self.parent else {
            return Ok(false);
        };
        let store = Arc::clone(&self.config.store);
        self.blocking(move || store.pagemap(parent, dst).map(|p| p.is_some()))
            .await
    }

    async fn entry(&mut self, req: Request) -> Result<(), SessionError> {
        let dst = self.dst(&req)?;
        if self.current != Some(dst) {
            // CRIU's server opens implicitly too ("IO w/o open").
            tracing::debug!(peer = %self.peer, ?dst, "entry without OPEN; opening implicitly");
            self.open(dst).await?;
        }
        let flags = req.command.entry_flags().expect("entry command");
        self.send(Job::Entry {
            vaddr: req.vaddr,
            nr_pages: req.nr_pages,
            flags,
        })
        .await?;
        if flags & PE_PRESENT == 0 {
            return Ok(());
        }

        let mut left = req.nr_pages;
        while left > 0 {
            let n = left.min(BATCH_PAGES as u64) as usize;
            let mut buf = self
                .free
                .lock()
                .expect("buffer pool poisoned")
                .pop()
                .unwrap_or_default();
            buf.resize(n * PAGE_SIZE, 0);
            let got = read_full(&mut self.stream, &mut buf, self.config.idle_timeout)
                .await
                .map_err(|source| SessionError::Io {
                    peer: self.peer,
                    source,
                })?;
            if got < buf.len() {
                let done = (req.nr_pages - left) + (got / PAGE_SIZE) as u64;
                let vaddr = req.vaddr + done * PAGE_SIZE as u64;
                return Err(SessionError::Truncated {
                    peer: self.peer,
                    vaddr,
                    missing: req.nr_pages - done,
                });
            }
            self.send(Job::Pages(buf)).await?;
            left -= n as u64;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<SessionEnd, SessionError> {
        // HELLO reserves a checkpoint; a session that never opened a pagemap drops it
        // (the worker removes its segment) instead of committing an empty checkpoint.
        let jobs = self.jobs.take().filter(|_| self.opened);
        let end = match jobs {
            None => {
                self.reply(&0i32.to_le_bytes()).await?;
                SessionEnd::Closed
            }
            Some(jobs) => {
                let (tx, rx) = oneshot::channel();
                let _ = jobs.send(Job::Commit(tx)).await;
                drop(jobs);
                let checkpoint = self.checkpoint.unwrap_or(0);
                let committed = rx
                    .await
                    .unwrap_or(Err(StoreError::NoCheckpoint { checkpoint }));
                match committed {
                    Ok(info) => {
                        self.reply(&0i32.to_le_bytes()).await?;
                        SessionEnd::Committed(info)
                    }
                    Err(source) => {
                        // Tell the client the checkpoint is not safe, then report why.
                        let _ = self.reply(&(-1i32).to_le_bytes()).await;
                        return Err(SessionError::Store {
                            peer: self.peer,
                            checkpoint,
                            source,
                        });
                    }
                }
            }
        };

        // Like CRIU's server, wait briefly for the peer to close first.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.read(&mut sink)).await;
        Ok(end)
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read. Fails with `TimedOut` when the
/// peer sends nothing for `idle`.
async fn read_full(
    stream: &mut TcpStream,
    buf: &mut [u8],
    idle: Duration,
) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let read = tokio::time::timeout(idle, stream.read(&mut buf[got..])).await;
        match read.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Binds a listener (helper for binaries and tests).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
