//! A blocking page-server client (std only, no tokio) for the dumper and the restorer.
//!
//! It speaks CRIU's protocol, so it works against `criu page-server` as well as cryo's server;
//! cryo's extensions are used only after an explicit [`Client::hello`].
//!
//! ```no_run
//! use cryo_pageserver::client::Client;
//! use cryo_pageserver::protocol::DstId;
//! # fn main() -> Result<(), cryo_pageserver::client::ClientError> {
//! let mut c = Client::connect("127.0.0.1:27027".parse().unwrap())?;
//! let dst = DstId::pid(1234);
//! let _has_parent = c.open2(dst)?;
//! c.add_pages(dst, 0x7f00_0000_0000, &[0u8; 8192], false)?; // two pages
//! c.hole(dst, 0x7f00_0000_2000, 4)?; // four pages that live in the parent
//! c.close()?; // the checkpoint is durable once this returns Ok
//! # Ok(()) }
//! ```
//!
//! - Dump side: [`Client::open2`] → [`Client::add_pages`] (from memory) or
//!   [`Client::add_from_fd`] (spliced from a pipe; no copy through user space) or
//!   [`Client::start_add`] followed by bytes someone else writes to [`Client::stream`]
//!   (the dumper's tracee) / [`Client::hole`] / [`Client::lazy`] → [`Client::close`].
//! - Restore side: [`Client::get`] for one range (the server may answer fewer pages than
//!   asked, never more); [`Client::use_checkpoint`] (cryo servers) selects the checkpoint.
//!
//! Every call has the socket timeouts given at connect time; every error names the peer. After
//! an error mid-request the stream is out of step, so the client refuses further requests.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use zerocopy::FromBytes;

use crate::protocol::{
    self, CRYO_EXT_VERSION, HEADER_SIZE, HelloReply, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT,
    WireHeader, cmd,
};
pub use crate::protocol::{DstId, DstKind};

/// Default socket timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Client errors; all name the peer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("page server {peer}: {nr_pages} pages in one request do not fit CRIU < 4.2's header")]
    TooManyPages { peer: SocketAddr, nr_pages: u64 },
    #[error("page server {peer}: connect")]
    Connect {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("page server {peer}: {during}")]
    Io {
        peer: SocketAddr,
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("page server {peer}: source fd ran dry after {sent} of {want} bytes")]
    SourceShort {
        peer: SocketAddr,
        sent: u64,
        want: u64,
    },
    #[error("page server {peer}: data of {len} bytes is not a whole number of pages")]
    NotPages { peer: SocketAddr, len: usize },
    #[error("page server {peer}: CLOSE answered status {status}: the checkpoint is not stored")]
    CloseStatus { peer: SocketAddr, status: i32 },
    #[error("page server {peer}: GET reply {what}")]
    BadGetReply { peer: SocketAddr, what: String },
    #[error("page server {peer}: server does not speak cryo extensions (reply {reply:?})")]
    NoExtensions { peer: SocketAddr, reply: Vec<u8> },
    #[error("page server {peer}: an earlier request failed mid-stream; reconnect")]
    Broken { peer: SocketAddr },
}

/// What a cryo server answered to HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// Id the checkpoint of this connection gets once committed.
    pub checkpoint_id: u64,
}

/// One connection to a page server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    broken: bool,
    /// Send CRIU < 4.2's 24-byte headers (see [`Client::legacy_headers`]).
    legacy: bool,
}

impl Client {
    /// Connects with [`DEFAULT_TIMEOUT`].
    pub fn connect(peer: SocketAddr) -> Result<Self, ClientError> {
        Self::connect_timeout(peer, DEFAULT_TIMEOUT)
    }

    /// Connects; `timeout` bounds the connect and every later read and write.
    pub fn connect_timeout(peer: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let err = |source| ClientError::Connect { peer, source };
        let stream = TcpStream::connect_timeout(&peer, timeout).map_err(err)?;
        stream.set_read_timeout(Some(timeout)).map_err(err)?;
        stream.set_write_timeout(Some(timeout)).map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        Ok(Self {
            stream,
            peer,
            broken: false,
            legacy: false,
        })
    }

    /// Sends every later request with the 24-byte header of CRIU before 4.2 (whose
    /// `criu page-server` reads nothing else) instead of 4.2's 32-byte one.
    pub fn legacy_headers(mut self) -> Self {
        self.legacy = true;
        self
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn io(&mut self, during: &'static str, source: std::io::Error) -> ClientError {
        self.broken = true;
        ClientError::Io {
            peer: self.peer,
            during,
            source,
        }
    }

    fn check(&self) -> Result<(), ClientError> {
        if self.broken {
            Err(ClientError::Broken { peer: self.peer })
        } else {
            Ok(())
        }
    }

    fn send(
        &mut self,
        head: WireHeader,
        data: &[u8],
        during: &'static str,
    ) -> Result<(), ClientError> {
        self.check()?;
        let (full, legacy);
        let head: &[u8] = if self.legacy {
            if u32::try_from(head.nr_pages.get()).is_err() {
                return Err(ClientError::TooManyPages {
                    peer: self.peer,
                    nr_pages: head.nr_pages.get(),
                });
            }
            legacy = head.to_legacy_bytes();
            &legacy
        } else {
            full = head.to_bytes();
            &full
        };
        let mut bufs = [IoSlice::new(head), IoSlice::new(data)];
        let mut slices: &mut [IoSlice<'_>] = &mut bufs;
        while !slices.is_empty() {
            match self.stream.write_vectored(slices) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(self.io(during, e));
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(during, e)),
            }
        }
        Ok(())
    }

    fn recv<const N: usize>(&mut self, during: &'static str) -> Result<[u8; N], ClientError> {
        let mut b = [0u8; N];
        self.stream
            .read_exact(&mut b)
            .map_err(|e| self.io(during, e))?;
        Ok(b)
    }

    /// Announces a cryo client (do not call against a CRIU server: it aborts on unknown
    /// commands).
    pub fn hello(&mut self) -> Result<Hello, ClientError> {
        self.send(
            WireHeader::new(cmd::CRYO_HELLO, u64::from(CRYO_EXT_VERSION), 0, 0),
            &[],
            "HELLO",
        )?;
        let b: [u8; 16] = self.recv("HELLO reply")?;
        let reply = HelloReply::read_from_bytes(&b[..]).expect("16 bytes");
        // Anything but a version we know, with the reserved word 0, is not a cryo server
        // (an HTTP server's "HTTP/1.1 400" would otherwise pass for a checkpoint id).
        if !(1..=CRYO_EXT_VERSION).contains(&reply.version.get()) || reply.reserved.get() != 0 {
            return Err(ClientError::NoExtensions {
                peer: self.peer,
                reply: b.to_vec(),
            });
        }
        Ok(Hello {
            version: reply.version.get(),
            checkpoint_id: reply.checkpoint_id.get(),
        })
    }

    /// (cryo) Sets the parent checkpoint of this dump: `None` = no parent, `Some(u64::MAX)` =
    /// the newest one. Returns whether it exists. Call before the first OPEN2.
    pub fn set_parent(&mut self, parent: Option<u64>) -> Result<bool, ClientError> {
        let head = WireHeader::new(cmd::CRYO_SET_PARENT, 0, 0, parent.unwrap_or(0));
        self.send(head, &[], "SET_PARENT")?;
        Ok(u32::from_le_bytes(self.recv("SET_PARENT reply")?) == 0)
    }

    /// (cryo) Selects the checkpoint GETs read (`u64::MAX` = newest). Returns whether it exists.
    pub fn use_checkpoint(&mut self, checkpoint: u64) -> Result<bool, ClientError> {
        self.send(
            WireHeader::new(cmd::CRYO_USE_CHECKPOINT, 0, 0, checkpoint),
            &[],
            "USE_CHECKPOINT",
        )?;
        Ok(u32::from_le_bytes(self.recv("USE_CHECKPOINT reply")?) == 0)
    }

    /// Opens the pagemap of `dst`; returns whether the server's parent has one for it.
    pub fn open2(&mut self, dst: DstId) -> Result<bool, ClientError> {
        self.send(
            WireHeader::new(cmd::OPEN2, 0, 0, dst.encode()),
            &[],
            "OPEN2",
        )?;
        let [b]: [u8; 1] = self.recv("OPEN2 reply")?;
        Ok(b != 0)
    }

    /// Asks whether the parent holds a pagemap for `dst`.
    pub fn parent(&mut self, dst: DstId) -> Result<bool, ClientError> {
        self.send(
            WireHeader::new(cmd::PARENT, 0, 0, dst.encode()),
            &[],
            "PARENT",
        )?;
        Ok(i32::from_le_bytes(self.recv("PARENT reply")?) != 0)
    }

    /// Sends present pages from memory (`data.len()` a multiple of 4096).
    pub fn add_pages(
        &mut self,
        dst: DstId,
        vaddr: u64,
        data: &[u8],
        lazy: bool,
    ) -> Result<(), ClientError> {
        if !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(ClientError::NotPages {
                peer: self.peer,
                len: data.len(),
            });
        }
        let flags = PE_PRESENT | if lazy { PE_LAZY } else { 0 };
        let nr = (data.len() / PAGE_SIZE) as u64;
        self.send(
            WireHeader::new(protocol::add_f_word(flags), nr, vaddr, dst.encode()),
            data,
            "ADD_F",
        )
    }

    /// Sends `nr_pages` present pages read from `source` (a pipe) with `splice`, so page data
    /// goes pipe → socket inside the kernel.
    pub fn add_from_fd(
        &mut self,
        dst: DstId,
        vaddr: u64,
        nr_pages: u64,
        source: impl AsFd,
        lazy: bool,
    ) -> Result<(), ClientError> {
        self.start_add(dst, vaddr, nr_pages, lazy)?;
        self.splice_from(source, nr_pages * PAGE_SIZE as u64)
    }

    /// Marks the connection unusable: page bytes written to it by someone else (a
    /// tracee sharing the socket) stopped part-way, so the stream is out of step.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Announces `nr_pages` present pages at `vaddr`; their bytes must follow, in order,
    /// through [`Self::splice_from`] (in as many parts as the caller has them).
    pub fn start_add(
        &mut self,
        dst: DstId,
        vaddr: u64,
        nr_pages: u64,
        lazy: bool,
    ) -> Result<(), ClientError> {
        let flags = PE_PRESENT | if lazy { PE_LAZY } else { 0 };
        self.send(
            WireHeader::new(protocol::add_f_word(flags), nr_pages, vaddr, dst.encode()),
            &[],
            "ADD_F",
        )
    }

    /// Splices exactly `len` bytes of announced pages from `source` (a pipe) into the socket.
    pub fn splice_from(&mut self, source: impl AsFd, len: u64) -> Result<(), ClientError> {
        let mut sent = 0u64;
        let spl = rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::MORE;
        while sent < len {
            let part = (len - sent).min(1 << 20) as usize;
            match rustix::pipe::splice(&source, None, &self.stream, None, part, spl) {
                Ok(0) => {
                    self.broken = true;
                    return Err(ClientError::SourceShort {
                        peer: self.peer,
                        sent,
                        want: len,
                    });
                }
                Ok(n) => sent += n as u64,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.io("splicing pages", e.into())),
            }
        }
        Ok(())
    }

    /// Announces `nr_pages` pages that live in the parent checkpoint.
    pub fn hole(&mut self, dst: DstId, vaddr: u64, nr_pages: u64) -> Result<(), ClientError> {
        let head = WireHeader::new(
            protocol::add_f_word(PE_PARENT),
            nr_pages,
            vaddr,
            dst.encode(),
        );
        self.send(head, &[], "ADD_F hole")
    }

    /// Announces `nr_pages` lazy pages whose data is not sent.
    pub fn lazy(&mut self, dst: DstId, vaddr: u64, nr_pages: u64) -> Result<(), ClientError> {
        let head = WireHeader::new(protocol::add_f_word(PE_LAZY), nr_pages, vaddr, dst.encode());
        self.send(head, &[], "ADD_F lazy")
    }

    /// Requests pages of `pid` at `vaddr`, up to `buf.len() / 4096`; fills the front of `buf`
    /// and returns how many pages arrived (the server may send fewer than asked; 0 means a
    /// cryo server has no such page).
    pub fn get(&mut self, pid: u64, vaddr: u64, buf: &mut [u8]) -> Result<u64, ClientError> {
        let want = (buf.len() / PAGE_SIZE) as u64;
        self.send(WireHeader::new(cmd::GET, want, vaddr, pid), &[], "GET")?;
        let head: [u8; HEADER_SIZE] = self.recv("GET reply")?;
        let reply = WireHeader::read_from_bytes(&head[..]).expect("32 bytes");
        let (word, nr, at) = (reply.cmd.get(), reply.nr_pages.get(), reply.vaddr.get());
        if word != protocol::add_f_word(PE_PRESENT) || nr > want || at != vaddr {
            self.broken = true;
            let what = format!("cmd {word:#x}, {nr} pages at {at:#x} (asked {want} at {vaddr:#x})");
            return Err(ClientError::BadGetReply {
                peer: self.peer,
                what,
            });
        }
        let len = nr as usize * PAGE_SIZE;
        self.stream
            .read_exact(&mut buf[..len])
            .map_err(|e| self.io("GET pages", e))?;
        Ok(nr)
    }

    /// Ends the session; `Ok` means the server stored the checkpoint durably.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.send(WireHeader::new(cmd::CLOSE, 0, 0, 0), &[], "CLOSE")?;
        let status = i32::from_le_bytes(self.recv("CLOSE reply")?);
        if status != 0 {
            return Err(ClientError::CloseStatus {
                peer: self.peer,
                status,
            });
        }
        Ok(())
    }

    /// Sends raw bytes (tests and replays of recorded sessions).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.check()?;
        self.stream
            .write_all(bytes)
            .map_err(|e| self.io("raw send", e))
    }

    /// The underlying stream (tests).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
