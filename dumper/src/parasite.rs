//! The parasite: state the dumper plants in a stopped process to work from inside it.
//!
//! cryo's parasite is not injected code but a handful of resources created by remote
//! syscalls ([`crate::remote`]) in the tracee's own context:
//!
//! * a scratch mapping (anonymous, private) where syscall arguments and results are
//!   exchanged; the dumper reads and writes it through `/proc/PID/mem` (control data
//!   only — page contents never pass through this path);
//! * duplicates of the dumper's destination fds (the pages image, a page server's
//!   connection), planted with [`Parasite::plant_fd`]: a unix socket pair made by the
//!   tracee, one end taken with `pidfd_getfd`, the fd passed over it with
//!   `SCM_RIGHTS`. The tracee then writes its own pages there ([`Parasite::writev`]).
//!
//! [`Parasite::cure`] closes the planted fds and unmaps the scratch area, so a process
//! resumed with `--leave-running` has exactly the maps and fds it had before. If the
//! dump fails halfway, the parasite is cured on drop as well.

use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::remote::{RemoteError, RemoteThread};

/// Size of the scratch mapping.
pub const SCRATCH_LEN: u64 = 64 * 1024;
/// Offset in the scratch area where iovec arrays start.
const IOV_OFFSET: u64 = 4096;
/// Offset in the scratch area of the `struct msghdr` of a socket write.
const MSGHDR_OFFSET: u64 = 256;
/// Most iovecs one writev call takes (the kernel caps a call at UIO_MAXIOV = 1024).
pub const MAX_IOVS: usize = 1024;

const _: () = assert!(IOV_OFFSET + (MAX_IOVS as u64) * 16 <= SCRATCH_LEN);

/// A failure while planting, using or removing the parasite.
#[derive(Debug, Error)]
pub enum ParasiteError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot access memory of {pid} at {addr:#x} through /proc/{pid}/mem")]
    Mem {
        pid: i32,
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{pid} may not write files over {limit} bytes (its hard RLIMIT_FSIZE), \
         its pages need {need}"
    )]
    FileSizeLimit { pid: i32, limit: u64, need: u64 },
    #[error("cannot read /proc/{pid}/status")]
    Status {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pass an fd into {pid}")]
    PassFd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take fd {fd} of {pid} with pidfd_getfd")]
    GetFd {
        pid: i32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A handle on the parasite's scratch area (cheap to clone; shares the mem file).
#[derive(Debug, Clone)]
pub struct Scratch {
    pid: i32,
    mem: std::sync::Arc<File>,
    base: u64,
}

impl Scratch {
    /// Address of byte `off` of the scratch area (0..4096 is for small results).
    pub fn addr(&self, off: u64) -> u64 {
        self.base + off
    }

    /// Writes control data into the scratch area.
    pub fn write(&self, off: u64, bytes: &[u8]) -> Result<(), ParasiteError> {
        let addr = self.base + off;
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|source| ParasiteError::Mem {
                pid: self.pid,
                addr,
                source,
            })
    }

    /// Reads back a result from the scratch area.
    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, ParasiteError> {
        let addr = self.base + off;
        let mut buf = vec![0u8; len];
        self.mem
            .read_exact_at(&mut buf, addr)
            .map_err(|source| ParasiteError::Mem {
                pid: self.pid,
                addr,
                source,
            })?;
        Ok(buf)
    }
}

/// Resources planted in one process of the tree.
#[derive(Debug)]
pub struct Parasite {
    pid: i32,
    remote: Option<RemoteThread>,
    scratch: Scratch,
    /// Fds [`Parasite::plant_fd`] installed in the tracee.
    planted: Vec<i32>,
    cured: bool,
}

impl Parasite {
    /// Plants the scratch mapping in `pid` using the stopped thread `remote`.
    pub fn plant(pid: i32, mut remote: RemoteThread) -> Result<Parasite, ParasiteError> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| ParasiteError::Mem {
                pid,
                addr: 0,
                source,
            })?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let scratch = remote.syscall(
            "mmap",
            libc::SYS_mmap,
            &[0, SCRATCH_LEN, prot, flags, u64::MAX, 0],
        )?;
        tracing::debug!(
            pid,
            scratch = format_args!("{scratch:#x}"),
            "parasite planted"
        );
        let scratch = Scratch {
            pid,
            mem: std::sync::Arc::new(mem),
            base: scratch,
        };
        Ok(Parasite {
            pid,
            remote: Some(remote),
            scratch,
            planted: Vec::new(),
            cured: false,
        })
    }

    /// Pid of the process the parasite lives in.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The thread running the remote syscalls.
    pub fn remote(&mut self) -> &mut RemoteThread {
        self.remote
            .as_mut()
            .expect("the remote thread stays until cure")
    }

    /// The scratch area.
    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// Address of byte `off` of the scratch area.
    pub fn scratch_addr(&self, off: u64) -> u64 {
        self.scratch.addr(off)
    }

    /// Runs a syscall whose only output is `out_len` bytes written at scratch offset 0;
    /// `args` may name that buffer with [`Parasite::scratch_addr`].
    pub fn call_out(
        &mut self,
        name: &'static str,
        nr: i64,
        args: &[u64],
        out_len: usize,
    ) -> Result<(u64, Vec<u8>), ParasiteError> {
        self.scratch.write(0, &vec![0u8; out_len])?;
        let ret = self.remote().syscall(name, nr, args)?;
        Ok((ret, self.scratch.read(0, out_len)?))
    }

    /// Installs a duplicate of the dumper's `fd` in the tracee and returns its number
    /// there: the tracee makes a unix socket pair, the dumper takes one end with
    /// `pidfd_getfd` and sends `fd` over it (`SCM_RIGHTS`), the tracee receives it with
    /// `recvmsg`. The pair is closed again; the planted fd stays until
    /// [`Self::close_planted`] or the cure.
    pub fn plant_fd(&mut self, fd: BorrowedFd<'_>) -> Result<i32, ParasiteError> {
        let at = self.scratch_addr(0);
        let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
        let (_, pair) = self.call_out(
            "socketpair",
            libc::SYS_socketpair,
            &[libc::AF_UNIX as u64, kind, 0, at],
            8,
        )?;
        let ours = i32::from_ne_bytes(pair[0..4].try_into().expect("4 bytes"));
        let theirs = i32::from_ne_bytes(pair[4..8].try_into().expect("4 bytes"));
        let received = self.pass_fd(fd, ours, theirs);
        let closed = [ours, theirs].map(|f| {
            self.remote()
                .syscall("close", libc::SYS_close, &[f as u64])
                .map(drop)
        });
        let planted = received?;
        self.planted.push(planted);
        closed.into_iter().collect::<Result<(), _>>()?;
        Ok(planted)
    }

    /// Sends `fd` into the tracee's socket pair (`ours` taken by the dumper, `theirs`
    /// read by the tracee) and returns the fd number the tracee received.
    fn pass_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        ours: i32,
        theirs: i32,
    ) -> Result<i32, ParasiteError> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let sock = take_fd(self.pid, ours)?;
        let fds = [fd];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &sock,
            &[std::io::IoSlice::new(b"F")],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| ParasiteError::PassFd {
            pid: self.pid,
            source: e.into(),
        })?;

        // struct msghdr at 0, its iovec at 64, one data byte at 96, the control buffer
        // (CMSG_SPACE(sizeof(int)) = 24 bytes) at 128.
        let base = self.scratch_addr(0);
        let mut msg = [0u8; 160];
        let put =
            |m: &mut [u8], off: usize, v: u64| m[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        put(&mut msg, 16, base + 64); // msg_iov
        put(&mut msg, 24, 1); // msg_iovlen
        put(&mut msg, 32, base + 128); // msg_control
        put(&mut msg, 40, 24); // msg_controllen
        put(&mut msg, 64, base + 96); // iov_base
        put(&mut msg, 72, 1); // iov_len
        self.scratch.write(0, &msg)?;
        self.remote().syscall(
            "recvmsg",
            libc::SYS_recvmsg,
            &[theirs as u64, base, libc::MSG_CMSG_CLOEXEC as u64],
        )?;
        let cmsg = self.scratch.read(128, 20)?;
        let len = u64::from_ne_bytes(cmsg[0..8].try_into().expect("8 bytes"));
        let level = i32::from_ne_bytes(cmsg[8..12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(cmsg[12..16].try_into().expect("4 bytes"));
        if len != 20 || level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
            return Err(ParasiteError::PassFd {
                pid: self.pid,
                source: std::io::Error::other(format!(
                    "the tracee received no fd (cmsg len {len}, level {level}, type {kind})"
                )),
            });
        }
        Ok(i32::from_ne_bytes(
            cmsg[16..20].try_into().expect("4 bytes"),
        ))
    }

    /// Makes sure the tracee may write a file of `need` bytes: its own `RLIMIT_FSIZE`
    /// governs the writes it makes for us. A soft limit below `need` is raised to the
    /// hard one; returns the limit to put back with [`Self::set_fsize`], if it changed.
    pub fn allow_file_size(&mut self, need: u64) -> Result<Option<[u64; 2]>, ParasiteError> {
        let at = self.scratch_addr(0);
        let (_, old) = self.call_out(
            "prlimit64(RLIMIT_FSIZE)",
            libc::SYS_prlimit64,
            &[0, libc::RLIMIT_FSIZE as u64, 0, at],
            16,
        )?;
        let cur = u64::from_ne_bytes(old[0..8].try_into().expect("8 bytes"));
        let max = u64::from_ne_bytes(old[8..16].try_into().expect("8 bytes"));
        if cur >= need {
            return Ok(None);
        }
        if max < need {
            return Err(ParasiteError::FileSizeLimit {
                pid: self.pid,
                limit: max,
                need,
            });
        }
        self.set_fsize([max, max])?;
        Ok(Some([cur, max]))
    }

    /// Sets the tracee's `RLIMIT_FSIZE` to `[soft, hard]`.
    pub fn set_fsize(&mut self, limit: [u64; 2]) -> Result<(), ParasiteError> {
        let mut new = [0u8; 16];
        new[0..8].copy_from_slice(&limit[0].to_ne_bytes());
        new[8..16].copy_from_slice(&limit[1].to_ne_bytes());
        self.scratch.write(0, &new)?;
        let at = self.scratch_addr(0);
        self.remote().syscall(
            "prlimit64(RLIMIT_FSIZE)",
            libc::SYS_prlimit64,
            &[0, libc::RLIMIT_FSIZE as u64, at, 0],
        )?;
        Ok(())
    }

    /// Closes an fd [`Self::plant_fd`] installed.
    pub fn close_planted(&mut self, fd: i32) -> Result<(), ParasiteError> {
        self.planted.retain(|&f| f != fd);
        self.remote()
            .syscall("close", libc::SYS_close, &[fd as u64])?;
        Ok(())
    }

    /// Has the tracee write its own memory at `iovs` (at most [`MAX_IOVS`]) to its fd
    /// `fd`: at file offset `offset` (`pwritev`), or to a socket (`sendmsg` with
    /// `MSG_NOSIGNAL`) when `offset` is `None`. A short file write is re-issued for the
    /// rest; a short socket write (its send timeout ran out) is returned as is. Returns
    /// the bytes written.
    ///
    /// A failed write can queue a signal in the tracee (`SIGXFSZ` past its
    /// `RLIMIT_FSIZE`; `SIGPIPE` is kept away by `MSG_NOSIGNAL`); one that was not
    /// pending before is taken back, so the process does not die of our write later.
    pub fn writev(
        &mut self,
        fd: i32,
        iovs: &[(u64, u64)],
        offset: Option<u64>,
    ) -> Result<u64, ParasiteError> {
        assert!(
            iovs.len() <= MAX_IOVS,
            "{} iovecs in one writev",
            iovs.len()
        );
        let before = pending_signals(self.pid)?;
        let result = self.writev_all(fd, iovs, offset);
        if result.is_err() {
            self.take_back_signals(before)?;
        }
        result
    }

    fn writev_all(
        &mut self,
        fd: i32,
        iovs: &[(u64, u64)],
        offset: Option<u64>,
    ) -> Result<u64, ParasiteError> {
        let want: u64 = iovs.iter().map(|(_, l)| l).sum();
        let mut done = 0;
        while done < want {
            let rest = skip_bytes(iovs, done);
            let bytes: Vec<u8> = rest
                .iter()
                .flat_map(|(addr, len)| [addr.to_ne_bytes(), len.to_ne_bytes()])
                .flatten()
                .collect();
            self.scratch.write(IOV_OFFSET, &bytes)?;
            let iov_at = self.scratch.addr(IOV_OFFSET);
            let n = match offset {
                // pwritev takes the offset split in two longs; on x86-64 the low one is all.
                Some(at) => self.remote().syscall(
                    "pwritev",
                    libc::SYS_pwritev,
                    &[fd as u64, iov_at, rest.len() as u64, at + done, 0],
                )?,
                None => {
                    // struct msghdr at MSGHDR_OFFSET: no name, the iovecs, no control.
                    let mut msg = [0u8; 56];
                    msg[16..24].copy_from_slice(&iov_at.to_ne_bytes());
                    msg[24..32].copy_from_slice(&(rest.len() as u64).to_ne_bytes());
                    self.scratch.write(MSGHDR_OFFSET, &msg)?;
                    let msg_at = self.scratch.addr(MSGHDR_OFFSET);
                    self.remote().syscall(
                        "sendmsg",
                        libc::SYS_sendmsg,
                        &[fd as u64, msg_at, libc::MSG_NOSIGNAL as u64],
                    )?
                }
            };
            done += n;
            // A socket write returns short only when its send timeout ran out: the
            // caller decides (a file write is re-issued for the rest).
            if n == 0 || offset.is_none() {
                break;
            }
        }
        Ok(done)
    }

    /// Dequeues the write signals that are pending now but were not in `before`.
    fn take_back_signals(&mut self, before: u64) -> Result<(), ParasiteError> {
        let raised = pending_signals(self.pid)? & !before;
        for sig in [libc::SIGXFSZ, libc::SIGPIPE] {
            let bit = 1u64 << (sig - 1);
            if raised & bit == 0 {
                continue;
            }
            // sigset at 0, a zero timespec at 16: rt_sigtimedwait returns at once.
            let mut args = [0u8; 32];
            args[0..8].copy_from_slice(&bit.to_ne_bytes());
            self.scratch.write(0, &args)?;
            let (set, timeout) = (self.scratch_addr(0), self.scratch_addr(16));
            let got = self.remote().syscall(
                "rt_sigtimedwait",
                libc::SYS_rt_sigtimedwait,
                &[set, 0, timeout, 8],
            )?;
            tracing::debug!(
                pid = self.pid,
                signal = got,
                "took back a signal our write raised"
            );
        }
        Ok(())
    }

    /// Removes everything the parasite added to the process; returns the remote thread.
    pub fn cure(mut self) -> Result<RemoteThread, ParasiteError> {
        self.cure_inner()?;
        Ok(self
            .remote
            .take()
            .expect("the remote thread stays until cure"))
    }

    fn cure_inner(&mut self) -> Result<(), ParasiteError> {
        if self.cured || self.remote.is_none() {
            return Ok(());
        }
        self.cured = true;
        for fd in std::mem::take(&mut self.planted) {
            self.remote()
                .syscall("close", libc::SYS_close, &[fd as u64])?;
        }
        let base = self.scratch.addr(0);
        self.remote()
            .syscall("munmap", libc::SYS_munmap, &[base, SCRATCH_LEN])?;
        tracing::debug!(pid = self.pid, "parasite cured");
        Ok(())
    }
}

impl Drop for Parasite {
    fn drop(&mut self) {
        if let Err(err) = self.cure_inner() {
            tracing::warn!(pid = self.pid, error = %err, "could not remove parasite");
        }
    }
}

fn skip_bytes(iovs: &[(u64, u64)], mut skip: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(addr, len) in iovs {
        if skip >= len {
            skip -= len;
            continue;
        }
        out.push((addr + skip, len - skip));
        skip = 0;
    }
    out
}

/// Signals pending for the thread `pid` or its whole process (`SigPnd | ShdPnd`).
fn pending_signals(pid: i32) -> Result<u64, ParasiteError> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).map_err(|source| ParasiteError::Status { pid, source })?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    Ok(field("SigPnd:") | field("ShdPnd:"))
}

/// Duplicates fd `fd` of process `pid` into the dumper with `pidfd_getfd`.
pub fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd, ParasiteError> {
    let err = |source| ParasiteError::GetFd { pid, fd, source };
    // SAFETY: pidfd_open takes no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: pidfd_open returned a new fd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes no pointers.
    let got = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        )
    };
    if got < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: pidfd_getfd returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_bytes_resumes_inside_an_iovec() {
        let iovs = [(0x1000, 0x2000), (0x8000, 0x1000)];
        assert_eq!(skip_bytes(&iovs, 0), iovs.to_vec());
        assert_eq!(
            skip_bytes(&iovs, 0x1000),
            vec![(0x2000, 0x1000), (0x8000, 0x1000)]
        );
        assert_eq!(skip_bytes(&iovs, 0x2800), vec![(0x8800, 0x800)]);
        assert!(skip_bytes(&iovs, 0x3000).is_empty());
    }
}
