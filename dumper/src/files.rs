//! Open files: fd tables into `fdinfo-N.img`, file objects into `files.img`, pipe
//! contents into `pipes-data.img`.
//!
//! Every open file description gets one id in `files.img`; fds that share a description
//! (dup'd, or inherited across fork) share the id. Candidates are grouped by device and
//! inode and confirmed with `kcmp(KCMP_FILE)`. Paths that are not fds (the executable,
//! mapped files, cwd and root) get their own read-only `REG` entries, deduplicated by
//! path.
//!
//! Kinds: regular files and directories are `REG` (path, flags, position, size, mode);
//! character devices other than terminals are `REG` too, reopened by path on restore
//! (as CRIU does for `/dev/null`); pipes are `PIPE` with the pipe inode as `pipe_id`.
//! Their buffered bytes are taken without consuming them: the pipe is opened a second
//! time through `/proc/PID/fd/N` and `tee`d into a pipe of the dumper's own. eventfd,
//! timerfd, signalfd and epoll fds are read from their fdinfo ([`crate::anon`]).
//! Anything else (sockets, io_uring, inotify, memfd, terminals without `--shell-job`,
//! named fifos, deleted files) is an [`FilesError::Unsupported`] error naming the pid,
//! fd and kind.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use cryo_format::schema::{
    FdTypes, FdinfoEntry, FileEntry, FownEntry, PipeDataEntry, PipeEntry, RegFileEntry,
    TtyFileEntry, TtyInfoEntry,
};
use thiserror::Error;

use crate::anon;

const KCMP_FILE: i32 = 0;

/// A failure while collecting open files.
#[derive(Debug, Error)]
pub enum FilesError {
    #[error("process {pid}: fd {fd} is a {kind}, which cryo cannot dump")]
    Unsupported { pid: i32, fd: i32, kind: String },
    #[error("process {pid}: cannot read {what} of fd {fd}")]
    Proc {
        pid: i32,
        fd: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: fd {fd}: no readable {what} in its /proc fdinfo")]
    Parse {
        pid: i32,
        fd: i32,
        what: &'static str,
    },
    #[error("process {pid}: cannot list its fds")]
    List {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: cannot copy the contents of pipe {pipe_id} (fd {fd})")]
    PipeData {
        pid: i32,
        fd: i32,
        pipe_id: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Buffered bytes of one pipe.
#[derive(Debug, Clone)]
pub struct PipeData {
    pub entry: PipeDataEntry,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct SeenFd {
    pid: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    id: u32,
}

/// Collects `files.img`, per-table fd lists and pipe data for a whole tree.
#[derive(Debug, Default)]
pub struct FileTable {
    files: Vec<FileEntry>,
    by_path: HashMap<String, u32>,
    seen: Vec<SeenFd>,
    pipes: HashMap<u32, PipeData>,
    shell_job: bool,
    ttys: Vec<TtyInfoEntry>,
    tty_by_rdev: HashMap<u64, u32>,
}

fn fown() -> FownEntry {
    FownEntry {
        uid: 0,
        euid: 0,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

impl FileTable {
    pub fn new() -> FileTable {
        FileTable::default()
    }

    /// A table that accepts terminal fds (a shell job's terminal, given back by the
    /// restorer's own terminal on restore).
    pub fn for_shell_job() -> FileTable {
        FileTable {
            shell_job: true,
            ..FileTable::default()
        }
    }

    /// `tty-info.img` entries, one per terminal seen.
    pub fn ttys(&self) -> &[TtyInfoEntry] {
        &self.ttys
    }

    fn tty_info_id(&mut self, pid: i32, fd: i32, rdev: u64) -> Result<u32, FilesError> {
        if let Some(&id) = self.tty_by_rdev.get(&rdev) {
            return Ok(id);
        }
        let id = self.ttys.len() as u32 + 1;
        self.ttys.push(crate::tty::tty_info(pid, fd, rdev, id)?);
        self.tty_by_rdev.insert(rdev, id);
        Ok(id)
    }

    fn next_id(&self) -> u32 {
        self.files.len() as u32 + 1
    }

    /// A read-only `REG` entry for `path` (executable, mapped file, cwd, root).
    pub fn path_id(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        let id = self.next_id();
        let meta = fs::metadata(path).ok();
        let reg = RegFileEntry {
            id,
            flags: 0,
            pos: 0,
            fown: fown(),
            name: path.to_string(),
            size: meta.as_ref().filter(|m| m.is_file()).map(|m| m.len()),
            mode: meta.as_ref().map(|m| m.mode()),
            ..RegFileEntry::default()
        };
        self.files.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            reg: Some(reg),
            ..FileEntry::default()
        });
        self.by_path.insert(path.to_string(), id);
        id
    }

    /// Dumps the fd table of `pid`, returning its `fdinfo` entries in fd order.
    pub fn dump_fds(&mut self, pid: i32) -> Result<Vec<FdinfoEntry>, FilesError> {
        let dir = format!("/proc/{pid}/fd");
        let mut fds: Vec<i32> = fs::read_dir(&dir)
            .map_err(|source| FilesError::List { pid, source })?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();

        let mut out = Vec::with_capacity(fds.len());
        for fd in fds {
            out.push(self.dump_fd(pid, fd)?);
        }
        Ok(out)
    }

    fn dump_fd(&mut self, pid: i32, fd: i32) -> Result<FdinfoEntry, FilesError> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let proc_err = |what, source| FilesError::Proc {
            pid,
            fd,
            what,
            source,
        };
        let target = fs::read_link(&link).map_err(|e| proc_err("link", e))?;
        let target = target.to_string_lossy().into_owned();
        let meta = fs::metadata(&link).map_err(|e| proc_err("stat", e))?;
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .map_err(|e| proc_err("fdinfo", e))?;
        let field = |name: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
        };
        let flags = field("flags:")
            .and_then(|f| u32::from_str_radix(&f, 8).ok())
            .unwrap_or(0);
        let pos = field("pos:")
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let fd_flags = u32::from(flags & libc::O_CLOEXEC as u32 != 0);
        let file_flags = flags & !(libc::O_CLOEXEC as u32);

        let unsupported = |kind: &str| FilesError::Unsupported {
            pid,
            fd,
            kind: kind.to_string(),
        };
        let ft = meta.file_type();
        let kind = if target.starts_with("pipe:[") {
            FdTypes::Pipe
        } else if target.starts_with("socket:[") {
            return Err(unsupported("socket"));
        } else if let Some(anon) = target.strip_prefix("anon_inode:") {
            match anon {
                "[eventfd]" => FdTypes::Eventfd,
                "[timerfd]" => FdTypes::Timerfd,
                "[signalfd]" => FdTypes::Signalfd,
                "[eventpoll]" => FdTypes::Eventpoll,
                _ => return Err(unsupported(&format!("anon inode {anon}"))),
            }
        } else if target.starts_with("/memfd:") {
            return Err(unsupported("memfd"));
        } else if target.ends_with(" (deleted)") {
            return Err(unsupported("deleted file"));
        } else if ft.is_fifo() {
            return Err(unsupported("named fifo"));
        } else if ft.is_char_device() && crate::tty::is_tty(meta.rdev()) {
            if !self.shell_job {
                return Err(unsupported("terminal (dump a shell job with --shell-job)"));
            }
            FdTypes::Tty
        } else if ft.is_file() || ft.is_dir() || ft.is_char_device() {
            FdTypes::Reg
        } else {
            return Err(unsupported(&format!(
                "file of mode {:o} ({target})",
                meta.mode()
            )));
        };

        if let Some(id) = self.find_shared(pid, fd, meta.dev(), meta.ino()) {
            return Ok(FdinfoEntry {
                id,
                flags: fd_flags,
                r#type: kind as i32,
                fd: fd as u32,
                ..FdinfoEntry::default()
            });
        }
        let id = self.next_id();
        let mut entry = FileEntry {
            r#type: kind as i32,
            id,
            ..FileEntry::default()
        };
        match kind {
            FdTypes::Tty => {
                let tty_info_id = self.tty_info_id(pid, fd, meta.rdev())?;
                let regf_id = self.path_id(&target);
                // path_id may have taken the id reserved above; allocate after it.
                let id = self.next_id();
                entry.id = id;
                entry.tty = Some(TtyFileEntry {
                    id,
                    tty_info_id,
                    flags: file_flags,
                    fown: fown(),
                    regf_id: Some(regf_id),
                });
                self.files.push(entry);
                self.seen.push(SeenFd {
                    pid,
                    fd,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    id,
                });
                return Ok(FdinfoEntry {
                    id,
                    flags: fd_flags,
                    r#type: kind as i32,
                    fd: fd as u32,
                    ..FdinfoEntry::default()
                });
            }
            FdTypes::Eventfd | FdTypes::Timerfd | FdTypes::Signalfd | FdTypes::Eventpoll => {
                let bad = |what: &'static str| FilesError::Parse { pid, fd, what };
                match kind {
                    FdTypes::Eventfd => {
                        entry.efd =
                            Some(anon::eventfd(id, file_flags, fown(), &info).map_err(bad)?);
                    }
                    FdTypes::Timerfd => {
                        entry.tfd =
                            Some(anon::timerfd(id, file_flags, fown(), &info).map_err(bad)?);
                    }
                    FdTypes::Signalfd => {
                        entry.sgfd =
                            Some(anon::signalfd(id, file_flags, fown(), &info).map_err(bad)?);
                    }
                    _ => {
                        entry.epfd =
                            Some(anon::eventpoll(id, file_flags, fown(), &info).map_err(bad)?);
                    }
                }
            }
            FdTypes::Pipe => {
                let pipe_id = meta.ino() as u32;
                entry.pipe = Some(PipeEntry {
                    id,
                    pipe_id,
                    flags: file_flags,
                    fown: fown(),
                });
                if let std::collections::hash_map::Entry::Vacant(slot) = self.pipes.entry(pipe_id) {
                    slot.insert(read_pipe_data(pid, fd, pipe_id)?);
                }
            }
            _ => {
                entry.reg = Some(RegFileEntry {
                    id,
                    flags: file_flags,
                    pos,
                    fown: fown(),
                    name: target,
                    // As CRIU: no size for a file open for appending (a log keeps
                    // growing; CRIU's restore refuses a regular file whose size
                    // differs from a recorded one).
                    size: (ft.is_file() && file_flags & libc::O_APPEND as u32 == 0)
                        .then_some(meta.len()),
                    mode: Some(meta.mode()),
                    ..RegFileEntry::default()
                });
            }
        }
        self.files.push(entry);
        self.seen.push(SeenFd {
            pid,
            fd,
            dev: meta.dev(),
            ino: meta.ino(),
            id,
        });
        Ok(FdinfoEntry {
            id,
            flags: fd_flags,
            r#type: kind as i32,
            fd: fd as u32,
            ..FdinfoEntry::default()
        })
    }

    fn find_shared(&self, pid: i32, fd: i32, dev: u64, ino: u64) -> Option<u32> {
        self.seen
            .iter()
            .filter(|s| s.dev == dev && s.ino == ino)
            .find(|s| {
                // SAFETY: kcmp takes no pointers; it compares two fds of two processes.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_kcmp,
                        pid,
                        s.pid,
                        KCMP_FILE,
                        fd as libc::c_long,
                        s.fd as libc::c_long,
                    )
                };
                r == 0
            })
            .map(|s| s.id)
    }

    /// All file entries, in id order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Contents of every pipe seen, in pipe id order.
    pub fn pipes(&self) -> Vec<&PipeData> {
        let mut v: Vec<&PipeData> = self.pipes.values().collect();
        v.sort_by_key(|p| p.entry.pipe_id);
        v
    }
}

fn read_pipe_data(pid: i32, fd: i32, pipe_id: u32) -> Result<PipeData, FilesError> {
    let err = |source| FilesError::PipeData {
        pid,
        fd,
        pipe_id,
        source,
    };
    let src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(err)?;

    // SAFETY: F_GETPIPE_SZ on a pipe fd we own.
    let capacity = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    if unsafe { libc::ioctl(src.as_raw_fd(), libc::FIONREAD, &mut avail) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }

    let mut bytes = Vec::with_capacity(avail.max(0) as usize);
    if avail > 0 {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two new fds that we now own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on our own pipe; the source's capacity is always allowed.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity.max(4096)) };
        // tee duplicates the buffered bytes without consuming them from the source.
        // SAFETY: tee between two pipe fds we hold.
        let n = unsafe {
            libc::tee(
                src.as_raw_fd(),
                w.as_raw_fd(),
                avail as usize,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        drop(w);
        let mut file = fs::File::from(r);
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(err)?;
        if bytes.len() != avail as usize {
            let msg = format!("tee copied {} of {avail} buffered bytes", bytes.len());
            return Err(err(std::io::Error::other(msg)));
        }
    }
    let entry = PipeDataEntry {
        pipe_id,
        bytes: bytes.len() as u32,
        size: Some(capacity.max(0) as u32),
    };
    Ok(PipeData { entry, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_contents_are_copied_without_being_consumed() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into our array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the fds are new and owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let payload: Vec<u8> = (0..3000u32).map(|k| (k * 7 + 3) as u8).collect();
        let mut wf = fs::File::from(w);
        std::io::Write::write_all(&mut wf, &payload).unwrap();

        let pid = std::process::id() as i32;
        let data = read_pipe_data(pid, r.as_raw_fd(), 77).unwrap();
        assert_eq!(data.bytes, payload);
        assert_eq!(data.entry.bytes, 3000);
        assert!(data.entry.size.unwrap() >= 4096);

        let mut again = Vec::new();
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let _ = std::io::Read::read_to_end(&mut fs::File::from(r), &mut again);
        assert_eq!(again, payload, "the original pipe still holds every byte");
    }

    #[test]
    fn shared_descriptions_share_one_id_and_sockets_are_refused() {
        let pid = std::process::id() as i32;
        let f = fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of an fd we own; the new fd is owned below.
        let dup = unsafe { OwnedFd::from_raw_fd(libc::dup(f.as_raw_fd())) };
        let mut table = FileTable::new();
        let a = table.dump_fd(pid, f.as_raw_fd()).unwrap();
        let b = table.dump_fd(pid, dup.as_raw_fd()).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.r#type, FdTypes::Reg as i32);
        assert_eq!(table.files().len(), 1);

        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = table.dump_fd(pid, sock.as_raw_fd()).unwrap_err();
        assert!(
            matches!(err, FilesError::Unsupported { ref kind, .. } if kind == "socket"),
            "{err}"
        );
    }
}
