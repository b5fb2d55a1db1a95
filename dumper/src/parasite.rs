//! The parasite: state the dumper plants in a stopped process to work from inside it.
//!
//! cryo's parasite is not injected code but a handful of resources created by remote
//! syscalls ([`crate::remote`]) in the tracee's own context:
//!
//! * a scratch mapping (anonymous, private) where syscall arguments and results are
//!   exchanged; the dumper reads and writes it through `/proc/PID/mem` (control data
//!   only — page contents never pass through this path);
//! * one pipe, whose read end the dumper takes with `pidfd_getfd` and whose read end
//!   in the tracee is closed at once. The tracee `vmsplice`s its own pages into the
//!   write end; the dumper splices them out to the pages image (or a socket).
//!
//! [`Parasite::cure`] closes the write end and unmaps the scratch area, so a process
//! resumed with `--leave-running` has exactly the maps and fds it had before. If the
//! dump fails halfway, the parasite is cured on drop as well.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::remote::{RemoteError, RemoteThread};

/// Size of the scratch mapping.
pub const SCRATCH_LEN: u64 = 64 * 1024;
/// Offset in the scratch area where iovec arrays start.
const IOV_OFFSET: u64 = 4096;
/// Most iovecs one vmsplice call takes (the kernel caps a call at UIO_MAXIOV = 1024).
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
    pipe_w: Option<i32>,
    pipe_r: Option<OwnedFd>,
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
            pipe_w: None,
            pipe_r: None,
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

    /// Creates the page pipe of `capacity` bytes; returns the dumper's read end.
    pub fn open_page_pipe(&mut self, capacity: usize) -> Result<&OwnedFd, ParasiteError> {
        let at = self.scratch_addr(0);
        let (_, fds) = self.call_out("pipe2", libc::SYS_pipe2, &[at, libc::O_CLOEXEC as u64], 8)?;
        let rfd = i32::from_ne_bytes(fds[0..4].try_into().expect("4 bytes"));
        let wfd = i32::from_ne_bytes(fds[4..8].try_into().expect("4 bytes"));
        self.pipe_w = Some(wfd);

        let taken = take_fd(self.pid, rfd);
        self.remote()
            .syscall("close", libc::SYS_close, &[rfd as u64])?;
        let local = taken?;
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure only leaves the default size.
        let set = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&local),
                libc::F_SETPIPE_SZ,
                capacity as libc::c_int,
            )
        };
        if set < 0 {
            tracing::debug!(
                pid = self.pid,
                capacity,
                "F_SETPIPE_SZ failed, keeping default"
            );
        }
        Ok(self.pipe_r.insert(local))
    }

    /// Capacity of the page pipe in bytes.
    pub fn page_pipe_capacity(&self) -> usize {
        let Some(fd) = self.pipe_r.as_ref() else {
            return 0;
        };
        // SAFETY: F_GETPIPE_SZ on a pipe fd we own.
        let sz = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::F_GETPIPE_SZ) };
        sz.max(0) as usize
    }

    /// The dumper's read end of the page pipe (after [`Self::open_page_pipe`]).
    pub fn page_pipe(&self) -> Option<&OwnedFd> {
        self.pipe_r.as_ref()
    }

    /// Splices the tracee's pages at `iovs` (address, length) into the page pipe.
    /// Blocks in the tracee until everything fits, so someone must drain the pipe.
    pub fn vmsplice(&mut self, iovs: &[(u64, u64)]) -> Result<u64, ParasiteError> {
        let wfd = self.pipe_w.expect("open_page_pipe before vmsplice");
        let mut done_total = 0;
        for chunk in iovs.chunks(MAX_IOVS) {
            let mut bytes = Vec::with_capacity(chunk.len() * 16);
            for (addr, len) in chunk {
                bytes.extend_from_slice(&addr.to_ne_bytes());
                bytes.extend_from_slice(&len.to_ne_bytes());
            }
            let want: u64 = chunk.iter().map(|(_, l)| l).sum();
            let mut done = 0;
            // vmsplice may stop short; re-issue the rest until all of it is in the pipe.
            while done < want {
                let rest = skip_bytes(chunk, done);
                let mut b = Vec::with_capacity(rest.len() * 16);
                for (addr, len) in &rest {
                    b.extend_from_slice(&addr.to_ne_bytes());
                    b.extend_from_slice(&len.to_ne_bytes());
                }
                self.scratch
                    .write(IOV_OFFSET, if done == 0 { &bytes } else { &b })?;
                let iov_at = self.scratch.addr(IOV_OFFSET);
                let n = self.remote().syscall(
                    "vmsplice",
                    libc::SYS_vmsplice,
                    &[wfd as u64, iov_at, rest.len() as u64, 0],
                )?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            done_total += done;
        }
        Ok(done_total)
    }

    /// Closes the tracee's write end of the page pipe (the reader then sees EOF).
    pub fn close_page_pipe(&mut self) -> Result<(), ParasiteError> {
        if let Some(wfd) = self.pipe_w.take() {
            self.remote()
                .syscall("close", libc::SYS_close, &[wfd as u64])?;
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
        self.pipe_r = None;
        if let Some(wfd) = self.pipe_w.take() {
            self.remote()
                .syscall("close", libc::SYS_close, &[wfd as u64])?;
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
