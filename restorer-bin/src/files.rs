//! Recreating the file objects of the dump in the restorer, for the tree to inherit.
//!
//! Every file object of files.img that some task uses is opened once, here, at a
//! descriptor number at or above `fd_base`. The created processes inherit these
//! descriptors and `dup3` them onto their dumped numbers (see `spawn`), so a file
//! description shared before the dump (one file id, several fds or processes) is
//! shared again, with one offset.
//!
//! - Regular files are opened with their dumped flags (without `O_CREAT`/`O_TRUNC`),
//!   their size is checked when the image recorded one, and the offset is restored.
//! - A pipe is created once per `pipe_id`, refilled with its bytes from
//!   pipes-data.img, and every end is reopened through `/proc/self/fd` so each file id
//!   gets its own file description with its own flags.
//! - A tty (a shell job) is the restorer's own terminal, and needs `--shell-job`.
//! - Eventfds, timerfds, signalfds and epoll instances are made again by their
//!   system calls (see `anonfd`); an epoll instance starts empty.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::plan::{FileSpec, RestorePlan};

/// Errors opening the dumped files.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file id {id}: cannot open {path}")]
    Open {
        id: u32,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("file id {id}: {path} is {found} bytes, the dump recorded {expected}")]
    Size {
        id: u32,
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("file id {id}: seeking {path} to {pos} failed")]
    Seek {
        id: u32,
        path: PathBuf,
        pos: u64,
        #[source]
        source: Errno,
    },
    #[error("pipe {pipe_id}: {step} failed")]
    Pipe {
        pipe_id: u32,
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("pipe {pipe_id}: {bytes} buffered bytes do not fit its capacity of {capacity}")]
    PipeOverflow {
        pipe_id: u32,
        bytes: usize,
        capacity: usize,
    },
    #[error("file id {id} is a terminal: restore it with --shell-job")]
    TtyNeedsShellJob { id: u32 },
    #[error("file id {id}: the restorer has no terminal on fd 0 to hand over")]
    NoTty { id: u32 },
    #[error(transparent)]
    Anon(#[from] crate::anonfd::AnonFdError),
    #[error("file id {id}: moving the descriptor above {base} failed")]
    Dup {
        id: u32,
        base: RawFd,
        #[source]
        source: Errno,
    },
}

/// Open descriptors by file id, all at or above the plan's base.
#[derive(Debug, Default)]
pub struct OpenFiles {
    by_id: HashMap<u32, OwnedFd>,
}

impl OpenFiles {
    pub fn fd(&self, id: u32) -> Option<RawFd> {
        self.by_id.get(&id).map(|f| f.as_raw_fd())
    }
}

/// Opens every file object that some task of `plan` has in its fd table.
pub fn open_all(plan: &RestorePlan, base: RawFd, shell_job: bool) -> Result<OpenFiles, FileError> {
    let used: BTreeMap<u32, &FileSpec> = plan
        .processes
        .iter()
        .flat_map(|p| p.fds.iter())
        .filter_map(|f| plan.files.get(&f.file_id).map(|s| (f.file_id, s)))
        .collect();

    let mut out = OpenFiles::default();
    let mut pipes: HashMap<u32, (OwnedFd, OwnedFd)> = HashMap::new();
    for (&id, spec) in &used {
        let fd = match spec {
            FileSpec::Regular {
                path,
                flags,
                pos,
                size,
            } => open_regular(id, path, *flags, *pos, *size)?,
            FileSpec::Pipe { pipe_id, flags } => {
                if !pipes.contains_key(pipe_id) {
                    let data = plan.pipe_data.get(pipe_id);
                    pipes.insert(*pipe_id, make_pipe(*pipe_id, data)?);
                }
                let (r, w) = &pipes[pipe_id];
                reopen_pipe_end(*pipe_id, r, w, *flags)?
            }
            FileSpec::Tty => {
                if !shell_job {
                    return Err(FileError::TtyNeedsShellJob { id });
                }
                // SAFETY: isatty only inspects the descriptor.
                if unsafe { libc::isatty(0) } != 1 {
                    return Err(FileError::NoTty { id });
                }
                nix::unistd::dup(std::os::fd::AsFd::as_fd(&std::io::stdin()))
                    .map_err(|source| FileError::Dup { id, base, source })?
            }
            FileSpec::Anon(anon) => anon.open(id)?,
        };
        let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(base))
            .map_err(|source| FileError::Dup { id, base, source })?;
        // SAFETY: fcntl just returned this new descriptor; we own it.
        out.by_id.insert(id, unsafe { OwnedFd::from_raw_fd(high) });
    }
    Ok(out)
}

fn open_regular(
    id: u32,
    path: &PathBuf,
    flags: u32,
    pos: u64,
    size: Option<u64>,
) -> Result<OwnedFd, FileError> {
    // A FIFO at the path (not what the dump saw: FIFOs have their own file type)
    // would block the open; refuse it before opening.
    if std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    }) {
        return Err(FileError::Open {
            id,
            path: path.clone(),
            source: Errno::ENXIO,
        });
    }
    let keep = !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32;
    let oflag = OFlag::from_bits_retain((flags & keep) as i32) | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, oflag, nix::sys::stat::Mode::empty()).map_err(|source| {
        FileError::Open {
            id,
            path: path.clone(),
            source,
        }
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(|source| FileError::Open {
        id,
        path: path.clone(),
        source,
    })?;
    // A file open for appending keeps growing after the dump (logs): its size is
    // not a fact about the file the process expects, so only other files are checked.
    let is_regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let appending = flags & libc::O_APPEND as u32 != 0;
    if let Some(expected) = size
        && is_regular
        && !appending
        && st.st_size as u64 != expected
    {
        return Err(FileError::Size {
            id,
            path: path.clone(),
            expected,
            found: st.st_size as u64,
        });
    }
    if is_regular || pos != 0 {
        nix::unistd::lseek(&fd, pos as i64, nix::unistd::Whence::SeekSet).map_err(|source| {
            FileError::Seek {
                id,
                path: path.clone(),
                pos,
                source,
            }
        })?;
    }
    Ok(fd)
}

fn make_pipe(
    pipe_id: u32,
    data: Option<&crate::plan::PipeData>,
) -> Result<(OwnedFd, OwnedFd), FileError> {
    let err = |step| {
        move |source| FileError::Pipe {
            pipe_id,
            step,
            source,
        }
    };
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(err("pipe2"))?;
    let Some(data) = data else {
        return Ok((r, w));
    };
    if let Some(size) = data.size {
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(size as i32)).map_err(err("F_SETPIPE_SZ"))?;
    }
    let capacity = fcntl(&w, FcntlArg::F_GETPIPE_SZ).map_err(err("F_GETPIPE_SZ"))? as usize;
    if data.bytes.len() > capacity {
        return Err(FileError::PipeOverflow {
            pipe_id,
            bytes: data.bytes.len(),
            capacity,
        });
    }
    let mut done = 0;
    while done < data.bytes.len() {
        match nix::unistd::write(&w, &data.bytes[done..]) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(err("writing buffered bytes")(source)),
        }
    }
    Ok((r, w))
}

fn reopen_pipe_end(
    pipe_id: u32,
    r: &OwnedFd,
    w: &OwnedFd,
    flags: u32,
) -> Result<OwnedFd, FileError> {
    let write = flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
    let end = if write { w } else { r };
    let path = CString::new(format!("/proc/self/fd/{}", end.as_raw_fd())).expect("no NUL");
    let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_DIRECT;
    let oflag = (flags as i32 & keep) | libc::O_CLOEXEC;
    // SAFETY: open on a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), oflag) };
    if fd < 0 {
        return Err(FileError::Pipe {
            pipe_id,
            step: "reopening an end through /proc/self/fd",
            source: Errno::last(),
        });
    }
    // SAFETY: open just returned this descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
