//! The dump of a whole tree: freeze, collect, write, then kill or resume.
//!
//! Order matters for the promises the dumper makes:
//!
//! 1. The tree is frozen ([`FrozenTree`]); from here any error detaches everything.
//! 2. Per process: fds and VMAs are read *before* the parasite is planted (so its own
//!    pipe and scratch mapping never appear in the image), then the parasite collects
//!    what only the task knows and streams the pages out, and is cured.
//! 3. Every image except the inventory is committed; the inventory is written last and
//!    marks the set complete.
//! 4. Only then is the tree killed (default) or released (`leave_running`).
//!
//! If anything fails before step 3 ends, the images written so far are removed (and the
//! image directory too, if this dump created it), the parasite is cured and the tree is
//! detached, untouched. A directory that already holds any image file is refused before
//! anything is written, so a failed dump never removes images it did not write and a
//! successful one never leaves a mixed set.
//!
//! After the kill (the default), the dumper waits, bounded by [`KILL_WAIT`], until every
//! killed task has exited (a zombie or gone). It is not their parent, so it cannot reap
//! them: a pid is free for a restore only once the tree's parent has reaped it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryo_format::magic::well_known;
use cryo_format::schema::{
    DumpStatsEntry, FdinfoEntry, FsEntry, InventoryEntry, MmEntry, PstreeEntry, StatsEntry,
    TimensEntry, TimespecPair, VmaEntry,
};
use cryo_format::{ImageSet, ImageSetError, PagemapId, PagesWriteError};
use thiserror::Error;

use crate::files::{FileTable, FilesError};
use crate::ids::IdTable;
use crate::pages::{self, PagesError};
use crate::parasite::{Parasite, ParasiteError};
use crate::remote::{self, RemoteError, RemoteThread};
use crate::task::{self, TaskError};
use crate::tree::{FreezeError, FrozenTree, TaskInfo};
use crate::vma::{self, SmapsError};
use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::DstId;
use cryo_pageserver::record::CheckpointRecord;

/// How long a default-kill dump waits for the killed tasks to exit.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root of the tree.
    pub pid: i32,
    /// Image directory (created if missing; must not hold a complete dump).
    pub dir: PathBuf,
    /// Resume the tree after the dump instead of killing it.
    pub leave_running: bool,
    /// The tree is a shell job (its terminal is not part of the dump).
    pub shell_job: bool,
    /// Send pages to this page server instead of writing `pagemap-*`/`pages-*` images
    /// (the server writes them, as with CRIU's `--page-server`).
    pub page_server: Option<std::net::SocketAddr>,
    /// The page server is CRIU's own: send it nothing but CRIU's protocol (no cryo
    /// HELLO, which ends `criu page-server`'s only session); DIR records no checkpoint.
    pub criu_page_server: Option<CriuWire>,
}

/// Which framing a CRIU page server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriuWire {
    /// CRIU 4.2: 32-byte request headers (as cryo's own server).
    V4_2,
    /// CRIU before 4.2: 24-byte request headers.
    Legacy,
}

/// Figures of a finished dump.
#[derive(Debug, Clone)]
pub struct DumpSummary {
    pub processes: usize,
    pub threads: usize,
    pub pages_written: u64,
    /// From the first seize to the release (or kill) of the tree.
    pub frozen: Duration,
    /// Time spent moving pages out of the tree.
    pub memdump: Duration,
    pub total: Duration,
}

/// A failed dump. The tree has been left running and no inventory was written.
#[derive(Debug, Error)]
pub enum DumpError {
    #[error(
        "page server {peer} ended the session on cryo's HELLO and takes no new one: if it is \
         `criu page-server` (one session only), dump with --criu-page-server"
    )]
    PageServerGone {
        peer: std::net::SocketAddr,
        #[source]
        source: Box<cryo_pageserver::client::ClientError>,
    },
    #[error("stopped by signal {sig} before the dump was complete")]
    Interrupted { sig: i32 },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Pages(#[from] PagesError),
    #[error(transparent)]
    Parasite(#[from] ParasiteError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Smaps(#[from] SmapsError),
    #[error(transparent)]
    Images(#[from] ImageSetError),
    #[error(transparent)]
    PagesImage(#[from] PagesWriteError),
    #[error(transparent)]
    PageServer(#[from] cryo_pageserver::client::ClientError),
    #[error(transparent)]
    PageServerRecord(#[from] cryo_pageserver::record::RecordError),
    #[error("process {pid}: cannot read {what}")]
    Proc {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: {what} is not supported")]
    Unsupported { pid: i32, what: String },
    #[error(
        "{dir} already holds image file {file}: dump into an empty or new directory",
        dir = dir.display()
    )]
    StaleImages { dir: PathBuf, file: String },
    #[error("cannot read image directory {dir}", dir = dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `name` is an image file (or the temporary of one) of an image directory.
fn is_image_name(name: &str) -> bool {
    name.ends_with(".img")
        || name.ends_with(".cryo-tmp")
        || name == "stats-dump"
        || name == "stats-restore"
        || name == cryo_pageserver::record::FILE
}

/// Names in `dir` (empty if it cannot be read).
fn dir_names(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// Undoes a failed dump unless disarmed: removes the image files this dump created (those
/// not in the directory when it started) and the directories it created, deepest first.
struct Cleanup {
    dir: PathBuf,
    /// Names present in `dir` before the dump wrote anything.
    existing: Vec<std::ffi::OsString>,
    /// Directories this dump created (`dir` and any missing ancestors), outermost first.
    created_dirs: Vec<PathBuf>,
    armed: bool,
}

impl Cleanup {
    /// Checks `dir` and creates it (with missing ancestors). A directory holding a
    /// complete dump or any image file is refused before anything is touched.
    fn prepare(dir: &Path) -> Result<Cleanup, DumpError> {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur
            && !d.as_os_str().is_empty()
            && std::fs::symlink_metadata(d).is_err()
        {
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        missing.reverse();
        let existing = if missing.is_empty() {
            let inventory = dir.join("inventory.img");
            if inventory.exists() {
                return Err(ImageSetError::AlreadyComplete { path: inventory }.into());
            }
            let names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
                .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
                .map_err(|source| DumpError::ReadDir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
            let mut stale: Vec<String> = names
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| is_image_name(n))
                .collect();
            stale.sort();
            if let Some(file) = stale.into_iter().next() {
                return Err(DumpError::StaleImages {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
            names
        } else {
            Vec::new()
        };
        let mut cleanup = Cleanup {
            dir: dir.to_path_buf(),
            existing,
            created_dirs: Vec::new(),
            armed: true,
        };
        for d in missing {
            match std::fs::create_dir(&d) {
                Ok(()) => cleanup.created_dirs.push(d),
                // Created meanwhile by someone else: not ours to remove.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(ImageSetError::CreateDir { dir: d, source }.into());
                }
            }
        }
        Ok(cleanup)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for name in dir_names(&self.dir) {
            if is_image_name(&name.to_string_lossy()) && !self.existing.contains(&name) {
                let _ = std::fs::remove_file(self.dir.join(&name));
            }
        }
        // remove_dir only removes empty directories: anything else put there survives.
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Waits, at most `limit`, until none of `tids` is alive (each is a zombie or gone);
/// returns the ones still alive at the deadline.
fn wait_exited(tids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    let mut alive: Vec<i32> = tids.to_vec();
    loop {
        alive.retain(|&tid| !has_exited(tid));
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `tid` has exited: `/proc/TID/stat` is gone or says zombie (`Z`) or dead (`X`).
fn has_exited(tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{tid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x") | None)
}

fn read_link(pid: i32, what: &str) -> Result<String, DumpError> {
    std::fs::read_link(format!("/proc/{pid}/{what}"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| DumpError::Proc {
            pid,
            what: what.to_string(),
            source,
        })
}

/// Connects to the page server and negotiates cryo's extensions, which tell the id the
/// checkpoint gets. A CRIU page server drops a session on the unknown HELLO: then reconnect
/// and dump without an id (the restorer will need `--checkpoint`).
fn connect_page_server(
    addr: std::net::SocketAddr,
    criu: Option<CriuWire>,
) -> Result<(Client, Option<u64>), DumpError> {
    let mut client = Client::connect(addr)?;
    match criu {
        Some(CriuWire::V4_2) => return Ok((client, None)),
        Some(CriuWire::Legacy) => return Ok((client.legacy_headers(), None)),
        None => {}
    }
    match client.hello() {
        Ok(hello) => {
            tracing::info!(peer = %addr, checkpoint = hello.checkpoint_id, "page server checkpoint");
            Ok((client, Some(hello.checkpoint_id)))
        }
        Err(e) => {
            tracing::warn!(
                peer = %addr,
                error = %e,
                "page server does not speak cryo extensions; the dump records no checkpoint id"
            );
            drop(client);
            let client = Client::connect(addr).map_err(|e| DumpError::PageServerGone {
                peer: addr,
                source: Box::new(e),
            })?;
            Ok((client, None))
        }
    }
}

/// Dumps the tree rooted at `opts.pid` into `opts.dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpSummary, DumpError> {
    let started = Instant::now();
    let mut cleanup = Cleanup::prepare(&opts.dir)?;
    let set = ImageSet::create(&opts.dir)?;

    let (mut server, checkpoint_id) = match opts.page_server {
        Some(addr) => {
            // A record left by an earlier attempt would name another dump's checkpoint.
            CheckpointRecord::remove(&opts.dir)?;
            let (client, id) = connect_page_server(addr, opts.criu_page_server)?;
            (Some(client), id)
        }
        None => (None, None),
    };
    check_interrupt()?;
    let tree = FrozenTree::freeze(opts.pid)?;
    let frozen_at = Instant::now();
    let freezing = frozen_at - started;
    let timens = timens_now();
    tracing::info!(
        pid = opts.pid,
        processes = tree.tasks().len(),
        "tree frozen"
    );

    let mut files = if opts.shell_job {
        FileTable::for_shell_job()
    } else {
        FileTable::new()
    };
    let mut ids = IdTable::new();
    let mut dumped_tables: Vec<u32> = Vec::new();
    let mut pages_written = 0;
    let mut memdump = Duration::ZERO;
    let mut threads = 0;

    for (idx, info) in tree.tasks().iter().enumerate() {
        check_interrupt()?;
        if let Some((comm, status)) = &info.zombie {
            set.write_core(info.pid as u32, &task::zombie_core(comm, *status))?;
            threads += 1;
            continue;
        }
        let pages_id = idx as u32 + 1;
        let out = dump_process(
            info,
            pages_id,
            &set,
            server.as_mut(),
            &mut files,
            &mut ids,
            &mut dumped_tables,
        )?;
        pages_written += out.0;
        memdump += out.1;
        threads += info.threads.len();
    }

    tracing::debug!(
        ms = frozen_at.elapsed().as_secs_f64() * 1e3,
        "all processes collected"
    );
    let pstree: Vec<PstreeEntry> = tree
        .tasks()
        .iter()
        .map(|t| PstreeEntry {
            pid: t.pid as u32,
            ppid: t.ppid as u32,
            pgid: t.pgid as u32,
            sid: t.sid as u32,
            threads: t.threads.iter().map(|&t| t as u32).collect(),
        })
        .collect();
    set.write_pstree(&pstree)?;
    set.write_files(files.files())?;
    if !files.ttys().is_empty() {
        set.write_all("tty-info.img", well_known::tty_info(), files.ttys())?;
    }
    let pipes = files.pipes();
    if !pipes.is_empty() {
        let data: Vec<_> = pipes
            .iter()
            .map(|p| (p.entry, p.bytes.as_slice()))
            .collect();
        set.write_pipes_data(&data)?;
    }

    if let Some(client) = server.take() {
        let peer = client.peer();
        // The server has every page durably once CLOSE is acknowledged.
        client.close()?;
        // Tie DIR to its checkpoint (before the inventory, which marks the set complete).
        if let Some(checkpoint) = checkpoint_id {
            CheckpointRecord { checkpoint, peer }.write(&opts.dir)?;
        }
    }
    set.write_one("timens-0.img", well_known::timens(), &timens)?;
    let stats = StatsEntry {
        dump: Some(DumpStatsEntry {
            freezing_time: freezing.as_micros() as u32,
            frozen_time: frozen_at.elapsed().as_micros() as u32,
            memdump_time: memdump.as_micros() as u32,
            memwrite_time: memdump.as_micros() as u32,
            pages_scanned: pages_written,
            pages_skipped_parent: 0,
            pages_written,
            pages_lazy: 0,
            ..DumpStatsEntry::default()
        }),
        ..StatsEntry::default()
    };
    set.write_one("stats-dump", well_known::stats(), &stats)?;

    let inventory = InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids.root_ids()),
        ns_per_id: Some(true),
        lsmtype: Some(0),
        ..InventoryEntry::default()
    };
    // The last moment a stop request can still leave everything as it was.
    check_interrupt()?;
    set.finish(&inventory)?;
    tracing::debug!(
        ms = frozen_at.elapsed().as_secs_f64() * 1e3,
        "inventory written"
    );
    cleanup.armed = false;

    let processes = tree.tasks().len();
    let frozen = if opts.leave_running {
        tree.release();
        frozen_at.elapsed()
    } else {
        let tids: Vec<i32> = tree
            .tasks()
            .iter()
            .flat_map(|t| std::iter::once(t.pid).chain(t.threads.iter().copied()))
            .collect();
        let killed = tree.kill();
        let frozen = frozen_at.elapsed();
        killed.wait();
        // The tracer's exit report can come before the task is fully gone: wait until
        // each one is a zombie (for its parent to reap) or gone, so a restore can follow.
        let alive = wait_exited(&tids, KILL_WAIT);
        if !alive.is_empty() {
            tracing::warn!(
                ?alive,
                secs = KILL_WAIT.as_secs(),
                "killed tasks still exiting after the wait"
            );
        }
        frozen
    };
    tracing::info!(
        pid = opts.pid,
        processes,
        pages_written,
        frozen_ms = frozen.as_millis() as u64,
        "dump complete"
    );
    Ok(DumpSummary {
        processes,
        threads,
        pages_written,
        frozen,
        memdump,
        total: started.elapsed(),
    })
}

/// Dumps one frozen process; returns (pages written, time moving them).
fn dump_process(
    info: &TaskInfo,
    pages_id: u32,
    set: &cryo_format::ImageSetWriter,
    server: Option<&mut Client>,
    files: &mut FileTable,
    ids: &mut IdTable,
    dumped_tables: &mut Vec<u32>,
) -> Result<(u64, Duration), DumpError> {
    let pid = info.pid;
    let t_start = Instant::now();
    // Reading smaps and walking the page tables are both slow for big processes and
    // independent: do them at the same time.
    let (vmas, present) = std::thread::scope(|s| {
        let scan = s.spawn(|| pages::scan_present(pid));
        let vmas = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .map_err(|source| DumpError::Proc {
                pid,
                what: "smaps".into(),
                source,
            })
            .and_then(|text| Ok(vma::to_vmas(&vma::parse_smaps(pid, &text)?)));
        let present = scan.join().expect("page scan thread does not panic");
        (vmas, present)
    });
    let (vmas, present) = (vmas?, present?);
    // smaps and the page scan together.
    let smaps_ms = t_start.elapsed().as_secs_f64() * 1e3;
    if let Some(v) = vmas
        .iter()
        .find(|v| v.file.as_deref().is_some_and(|f| f.ends_with(" (deleted)")))
    {
        let file = v.file.as_deref().unwrap_or_default();
        let what = format!(
            "mapping of deleted file {file} at {:#x}-{:#x}",
            v.start, v.end
        );
        return Err(DumpError::Unsupported { pid, what });
    }
    if let Some(v) = vmas.iter().find(|v| v.kind == vma::VmaKind::AnonShared) {
        let what = format!("shared anonymous memory at {:#x}-{:#x}", v.start, v.end);
        return Err(DumpError::Unsupported { pid, what });
    }

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        DumpError::Proc {
            pid,
            what: "status".into(),
            source,
        }
    })?;
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    if seccomp.is_some_and(|m| m != "0") {
        let what = format!("seccomp (mode {})", seccomp.unwrap_or("?"));
        return Err(DumpError::Unsupported { pid, what });
    }

    let task_ids = ids.ids_of(pid);
    let fds = files.dump_fds(pid)?;
    let exe = read_link(pid, "exe")?;
    let exe_file_id = files.path_id(&exe);
    let vma_entries: Vec<VmaEntry> = vmas
        .iter()
        .map(|v| VmaEntry {
            start: v.start,
            end: v.end,
            pgoff: v.pgoff,
            shmid: v.file.as_deref().map_or(0, |f| files.path_id(f) as u64),
            prot: v.prot,
            flags: v.flags,
            status: v.status,
            fd: -1,
            madv: (v.madv != 0).then_some(v.madv),
            fdflags: v.fdflags,
        })
        .collect();
    let cwd = files.path_id(&read_link(pid, "cwd")?);
    let root = files.path_id(&read_link(pid, "root")?);
    let layout = task::mm_layout(pid)?;
    let auxv = task::saved_auxv(pid)?;
    let runs = pages::runs_for(&vmas, &present);

    let t_collect = Instant::now();
    tracing::debug!(
        pid,
        runs = runs.len(),
        vmas = vmas.len(),
        smaps_ms,
        "proc state read"
    );
    let syscall_ip = remote::find_syscall_insn(pid)?;
    let leader = RemoteThread::new(pid, syscall_ip)?;
    let mut parasite = Parasite::plant(pid, leader)?;
    let remote_info = task::process_remote(&mut parasite)?;
    let cores = task::cores(
        pid,
        &info.threads,
        &mut parasite,
        syscall_ip,
        &remote_info,
        info.stop_signal,
    )?;

    tracing::debug!(
        pid,
        ms = t_collect.elapsed().as_secs_f64() * 1e3,
        "parasite state collected"
    );
    let mem_started = Instant::now();
    let moved = match server {
        Some(client) => {
            let dst = DstId::pid(pid as u64);
            client.open2(dst)?;
            pages::send_direct(&mut parasite, &runs, client, dst)?
        }
        None => {
            let mut writer = set.pages(PagemapId::Pid(pid as u32), pages_id)?;
            let moved = pages::write_direct(&mut parasite, &runs, &mut writer)?;
            writer.finish()?;
            moved
        }
    };
    let memdump = mem_started.elapsed();
    tracing::debug!(
        pid,
        bytes = moved,
        ms = memdump.as_secs_f64() * 1e3,
        "pages written"
    );
    parasite.cure()?.restore()?;

    for (tid, core) in &cores {
        set.write_core(*tid as u32, core)?;
    }
    let mm = MmEntry {
        mm_start_code: layout.start_code,
        mm_end_code: layout.end_code,
        mm_start_data: layout.start_data,
        mm_end_data: layout.end_data,
        mm_start_stack: layout.start_stack,
        mm_start_brk: layout.start_brk,
        mm_brk: remote_info.brk,
        mm_arg_start: layout.arg_start,
        mm_arg_end: layout.arg_end,
        mm_env_start: layout.env_start,
        mm_env_end: layout.env_end,
        exe_file_id,
        mm_saved_auxv: auxv,
        vmas: vma_entries,
        dumpable: Some(remote_info.dumpable),
        aios: Vec::new(),
        thp_disabled: Some(remote_info.thp_disabled),
    };
    set.write_mm(pid as u32, &mm)?;
    set.write_ids(pid as u32, &task_ids)?;
    set.write_fs(
        pid as u32,
        &FsEntry {
            cwd_id: cwd,
            root_id: root,
            umask: Some(task::umask(pid)?),
        },
    )?;
    if !dumped_tables.contains(&task_ids.files_id) {
        dumped_tables.push(task_ids.files_id);
        write_fdinfo(set, task_ids.files_id, &fds)?;
    }
    Ok((moved / pages::PAGE_SIZE, memdump))
}

fn write_fdinfo(
    set: &cryo_format::ImageSetWriter,
    files_id: u32,
    fds: &[FdinfoEntry],
) -> Result<(), DumpError> {
    if !fds.is_empty() {
        set.write_fdinfo(files_id, fds)?;
    }
    Ok(())
}

/// The clocks a time namespace must continue from (`timens-0.img`, as CRIU writes it).
fn timens_now() -> TimensEntry {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        TimespecPair {
            tv_sec: ts.tv_sec as u64,
            tv_nsec: ts.tv_nsec as u64,
        }
    };
    TimensEntry {
        monotonic: now(libc::CLOCK_MONOTONIC),
        boottime: now(libc::CLOCK_BOOTTIME),
    }
}

/// Fails if a signal asked the dump to stop ([`crate::interrupt`]).
fn check_interrupt() -> Result<(), DumpError> {
    match crate::interrupt::requested() {
        Some(sig) => Err(DumpError::Interrupted { sig }),
        None => Ok(()),
    }
}

/// Whether `dir` holds a complete image set (its inventory exists).
pub fn is_complete(dir: &Path) -> bool {
    dir.join("inventory.img").exists()
}
