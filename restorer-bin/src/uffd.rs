//! Filling a child's anonymous memory with `UFFDIO_COPY`.
//!
//! Writing a fresh anonymous range costs more in the kernel's allocation and
//! zeroing of each page than in the copy itself. A userfaultfd registered on the
//! range lets `UFFDIO_COPY` allocate each page and fill it from our mapping of the
//! pages image in one step, with no zeroing and no fault per page. The userfaultfd
//! is created inside the child (it belongs to the child's mm), taken over with
//! `pidfd_getfd`, used, unregistered, and closed on both sides.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::inject::{InjectError, Tracee};

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);

/// Errors of the userfaultfd path (the caller falls back to another copy).
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("creating the userfaultfd in the child")]
    Create(#[source] InjectError),
    #[error("{step} failed")]
    Kernel {
        step: &'static str,
        #[source]
        source: Errno,
    },
}

/// A userfaultfd of a child, held by the restorer.
#[derive(Debug)]
pub struct ChildUffd {
    fd: OwnedFd,
    child_fd: u64,
}

fn ioctl<T>(
    fd: &OwnedFd,
    req: libc::c_ulong,
    arg: &mut T,
    step: &'static str,
) -> Result<(), UffdError> {
    // SAFETY: `arg` is the repr(C) struct the request expects (sizes asserted above).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if ret < 0 {
        return Err(UffdError::Kernel {
            step,
            source: Errno::last(),
        });
    }
    Ok(())
}

impl ChildUffd {
    /// Creates a userfaultfd in the child `t` and takes a copy of it.
    pub fn open(t: &Tracee, pid: i32) -> Result<Self, UffdError> {
        let child_fd = t
            .syscall(
                "userfaultfd",
                libc::SYS_userfaultfd,
                &[libc::O_CLOEXEC as u64],
            )
            .map_err(UffdError::Create)?;
        let kernel = |step| move |source| UffdError::Kernel { step, source };
        // SAFETY: plain syscalls; the returned descriptors are owned below.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = Errno::result(pidfd).map_err(kernel("pidfd_open"))?;
        // SAFETY: pidfd_open returned a new descriptor.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        // SAFETY: see above.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), child_fd, 0) };
        let fd = Errno::result(fd).map_err(kernel("pidfd_getfd"))?;
        // SAFETY: pidfd_getfd returned a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        ioctl(&fd, UFFDIO_API, &mut api, "UFFDIO_API")?;
        Ok(ChildUffd { fd, child_fd })
    }

    /// Fills `[dst, dst + src.len())` of the child, which must be unpopulated private
    /// anonymous memory, with `src`.
    pub fn fill(&self, dst: u64, src: &[u8]) -> Result<(), UffdError> {
        let range = UffdioRange {
            start: dst,
            len: src.len() as u64,
        };
        let mut reg = UffdioRegister {
            range,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&self.fd, UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER")?;
        let mut done = 0u64;
        let copied = loop {
            if done == range.len {
                break Ok(());
            }
            let mut copy = UffdioCopy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: range.len - done,
                mode: 0,
                copy: 0,
            };
            match ioctl(&self.fd, UFFDIO_COPY, &mut copy, "UFFDIO_COPY") {
                Ok(()) => done += copy.copy as u64,
                Err(UffdError::Kernel {
                    source: Errno::EAGAIN,
                    ..
                }) if copy.copy > 0 => done += copy.copy as u64,
                Err(e) => break Err(e),
            }
        };
        let mut unreg = range;
        let unregistered = ioctl(&self.fd, UFFDIO_UNREGISTER, &mut unreg, "UFFDIO_UNREGISTER");
        copied.and(unregistered)
    }

    /// Closes the child's descriptor (ours closes on drop).
    pub fn close(self, t: &Tracee) -> Result<(), InjectError> {
        t.syscall("close", libc::SYS_close, &[self.child_fd])
            .map(drop)
    }
}
