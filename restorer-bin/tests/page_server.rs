//! `restorer restore --page-server`: the tree is dumped with its pages sent to a real
//! `pageserver` process (the image directory gets no pagemap or pages images), then
//! restored with the pages read back over the page-server protocol.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use cryo_fixtures::{TreeGuard, Workload, field, last_tick_of, wait_for_log_line, wait_tick_after};

const WAIT: Duration = Duration::from_secs(15);

/// The `pageserver` binary of this workspace.
fn pageserver_bin() -> PathBuf {
    workspace_bin("cryo-pageserver", "pageserver")
}

/// A `pageserver serve` process on a free loopback port with a store of its own;
/// killed on drop.
struct PageServer {
    child: Child,
    addr: SocketAddr,
    _store: tempfile::TempDir,
    log: PathBuf,
}

impl PageServer {
    fn start() -> PageServer {
        let store = tempfile::tempdir().unwrap();
        let log = store.path().join("server.log");
        let mut child = Command::new(pageserver_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let mut server = PageServer {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            _store: store,
            log,
        };
        server.addr = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "pageserver did not report its address:\n{}",
                server.log_text()
            )
        });
        server
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn store(&self) -> PathBuf {
        self._store.path().join("store")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[test]
#[ignore = "helper: dumps CRYO_TEST_DUMP_PID (to CRYO_TEST_PAGE_SERVER if set) for another test"]
fn page_server_dump_helper() {
    dump_from_env();
}

/// Local `pagemap-*`/`pages-*` images in `dir`.
fn local_page_images(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("pagemap-") || n.starts_with("pages-"))
        .collect()
}

/// Dumps (and so kills) the workload's tree with its pages sent to `server`, in a
/// process of its own, then waits until the tree's pids are free again.
fn dump_to_server(w: &mut Workload, dir: &Path, server: &PageServer) {
    dump_in_helper(w, dir, Some(server));
    let local = local_page_images(dir);
    assert!(local.is_empty(), "pages were written locally: {local:?}");
}

/// Dumps the workload's tree (pages to `server`, or into `dir`) in a process of its
/// own, then waits until the tree's pids are free again.
fn dump_in_helper(w: &mut Workload, dir: &Path, server: Option<&PageServer>) {
    dump_with(w, dir, server.map(Peer::Cryo), false);
}

/// Where a dump in the helper sends its pages.
#[derive(Clone, Copy)]
enum Peer<'a> {
    /// cryo's `pageserver serve`.
    Cryo(&'a PageServer),
    /// CRIU 4.1's `criu page-server` at this address (`--criu-page-server 4.1`).
    Criu(SocketAddr),
}

/// Like [`dump_in_helper`]; with `leave_running` the tree runs on after the dump.
fn dump_with(w: &mut Workload, dir: &Path, server: Option<Peer<'_>>, leave_running: bool) {
    let pids = w.tree_pids();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "page_server_dump_helper",
        "--nocapture",
    ])
    .env("CRYO_TEST_DUMP_PID", w.pid().to_string())
    .env("CRYO_TEST_DUMP_DIR", dir);
    match server {
        Some(Peer::Cryo(server)) => {
            cmd.env("CRYO_TEST_PAGE_SERVER", server.addr());
        }
        Some(Peer::Criu(addr)) => {
            cmd.env("CRYO_TEST_PAGE_SERVER", addr.to_string())
                .env("CRYO_TEST_CRIU_PAGE_SERVER", "1");
        }
        None => {}
    }
    if leave_running {
        cmd.env("CRYO_TEST_LEAVE_RUNNING", "1");
    }
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success() && dir.join("inventory.img").exists(),
        "dump of {} failed:\n{}\n{}\nserver:\n{}",
        w.pid(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        match server {
            Some(Peer::Cryo(server)) => server.log_text(),
            _ => String::new(),
        }
    );
    if leave_running {
        return;
    }
    w.wait_exit(WAIT);
    let deadline = Instant::now() + WAIT;
    while let Some(pid) = taken(&pids) {
        assert!(Instant::now() < deadline, "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that the counter `pid` ticks on from `last`, consecutively, pattern intact.
fn assert_counter_continues(log: &Path, pid: i32, last: u64) {
    wait_tick_after(log, pid, last + 3, WAIT).unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    let ticks: Vec<u64> = text
        .lines()
        .filter(|l| field(l, "pid") == Some(pid.to_string().as_str()))
        .filter_map(|l| {
            let tick = cryo_fixtures::parse_tick(l)?;
            if tick > last {
                assert_eq!(field(l, "bad"), Some("0"), "memory pattern broken: {l}");
            }
            Some(tick)
        })
        .filter(|&t| t > last)
        .collect();
    let expected: Vec<u64> = (last + 1..last + 1 + ticks.len() as u64).collect();
    assert_eq!(ticks, expected);
}

#[test]
fn counter_continues_with_pages_from_the_page_server() {
    let server = PageServer::start();
    // 64 MiB: more than 16k pages to walk, so the walk is spread over several sessions
    // and its chunks are stitched back together.
    let mut w = Workload::counter(64).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_to_server(&mut w, images.path(), &server);
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &["--page-server", &server.addr()]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
    assert_counter_continues(w.log_path(), pid, last);
}

/// Sends the runs of `pid`'s local pagemap, except those `skip` selects, to `server`
/// as one checkpoint.
fn upload(server: &PageServer, dir: &Path, pid: i32, skip: impl Fn(usize) -> bool) {
    use cryo_pageserver::client::{Client, DstId};
    let view = cryo_format::MemoryView::open(dir, cryo_format::PagemapId::Pid(pid as u32)).unwrap();
    let mut c = Client::connect(server.addr).unwrap();
    let dst = DstId::pid(pid as u64);
    c.open2(dst).unwrap();
    for (i, seg) in view.resolved_runs().unwrap().into_iter().enumerate() {
        let cryo_format::Source::Data { bytes, .. } = seg.source else {
            panic!("run at {:#x} has no data", seg.vaddr);
        };
        if !skip(i) {
            c.add_pages(dst, seg.vaddr, bytes, false).unwrap();
        }
    }
    c.close().unwrap();
}

#[test]
fn pagemap_in_the_dir_gives_the_ranges_and_a_page_the_server_lacks_is_an_error() {
    let server = PageServer::start();
    let mut w = Workload::counter(8).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    dump_in_helper(&mut w, images.path(), None);
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let pagemap =
        cryo_format::Pagemap::open(images.path().join(format!("pagemap-{pid}.img"))).unwrap();
    let first = pagemap.runs()[0].vaddr;

    // Checkpoint 1 lacks the first run, checkpoint 2 has them all.
    upload(&server, images.path(), pid, |i| i == 0);
    upload(&server, images.path(), pid, |_| false);
    for name in local_page_images(images.path()) {
        if name.starts_with("pages-") {
            std::fs::remove_file(images.path().join(name)).unwrap();
        }
    }

    let err = restore_fails(
        images.path(),
        &["--page-server", &server.addr(), "--checkpoint", "1"],
    );
    let want = format!(
        "page server {}: checkpoint 1 has no page of pid {pid} at vaddr {first:#x}",
        server.addr()
    );
    assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
    // The directory was not dumped through the server, so it records no checkpoint: the
    // restorer asks for one instead of guessing.
    let err = restore_fails(images.path(), &["--page-server", &server.addr()]);
    assert!(err.contains("pass --checkpoint ID"), "{err}");
    assert_eq!(taken(&[pid]), None, "a failed restore left {pid} behind");

    let root = restore_detached(
        images.path(),
        &["--page-server", &server.addr(), "--checkpoint", "2"],
    );
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
    assert_counter_continues(w.log_path(), pid, last);
}

#[test]
fn pipe_tree_keeps_unread_bytes_with_pages_from_the_page_server() {
    let server = PageServer::start();
    let mut w = Workload::pipe_tree(1000).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    let children: Vec<i32> = w.tree_pids().into_iter().filter(|&p| p != pid).collect();
    assert_eq!(children.len(), 2);
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_to_server(&mut w, images.path(), &server);
    let root = restore_detached(images.path(), &["--page-server", &server.addr()]);
    let _guard = TreeGuard::new(root);

    for &child in &children {
        assert_eq!(proc_status_field(child, "PPid"), Some(pid as u64));
        let last = last_tick_of(w.log_path(), child).unwrap();
        wait_tick_after(w.log_path(), child, last + 2, WAIT).unwrap();
    }
    // SAFETY: kill(2) on the root of the test's own restored tree.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let log = w.log_path().to_path_buf();
    let line = wait_for_log_line(&log, |l| l.starts_with("pipe bytes="), WAIT).unwrap();
    assert_eq!(line, "pipe bytes=1000 ok=1");
}

#[test]
fn page_server_errors_name_the_peer_and_restore_nothing() {
    let server = PageServer::start();
    let mut w = Workload::counter(4).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();
    dump_to_server(&mut w, images.path(), &server);

    // The directory records checkpoint 1; another one is refused.
    let recorded = recorded_checkpoint(images.path());
    assert_eq!(recorded, 1);
    let err = restore_fails(
        images.path(),
        &["--page-server", &server.addr(), "--checkpoint", "4242"],
    );
    assert!(
        err.contains("--checkpoint 4242 does not match checkpoint 1"),
        "{err}"
    );
    // A server that never saw this tree lacks the recorded checkpoint.
    let empty = PageServer::start();
    let err = restore_fails(images.path(), &["--page-server", &empty.addr()]);
    assert!(
        err.contains(&format!("page server {}", empty.addr()))
            && err.contains("checkpoint 1 does not exist"),
        "{err}"
    );
    // Nobody listening.
    drop(empty);
    let err = restore_fails(images.path(), &["--page-server", "127.0.0.1:1"]);
    assert!(err.contains("page server 127.0.0.1:1"), "{err}");
    assert_eq!(taken(&[pid]), None, "a failed restore left {pid} behind");

    // The right one still restores.
    let root = restore_detached(images.path(), &["--page-server", &server.addr()]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
}

#[test]
fn threads_keep_their_tids_with_pages_from_the_page_server() {
    let server = PageServer::start();
    let mut w = Workload::threads(8, 3).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let tids = cryo_fixtures::thread_ids(pid);
    assert_eq!(tids.len(), 4);

    dump_to_server(&mut w, images.path(), &server);
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &["--page-server", &server.addr()]);
    let _guard = TreeGuard::new(root);
    assert_eq!(cryo_fixtures::thread_ids(root), tids);
    assert_counter_continues(w.log_path(), pid, last);
}

/// The checkpoint id the dumper recorded in `dir`.
fn recorded_checkpoint(dir: &Path) -> u64 {
    cryo_pageserver::record::CheckpointRecord::read(dir)
        .unwrap()
        .unwrap_or_else(|| panic!("{} records no checkpoint", dir.display()))
        .checkpoint
}

/// Two dumps of one process through one server: restoring the older directory takes the
/// older checkpoint's pages (the ones its registers belong to), not the newest checkpoint.
#[test]
fn an_older_dump_restores_with_its_own_checkpoint_not_the_newest() {
    let server = PageServer::start();
    let mut w = Workload::counter(8).unwrap();
    let pid = w.pid();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    // First dump, leaving the counter running: it was frozen at a tick in [before, after].
    let before = last_tick_of(w.log_path(), pid).unwrap();
    dump_with(&mut w, first.path(), Some(Peer::Cryo(&server)), true);
    let after = last_tick_of(w.log_path(), pid).unwrap();
    assert!(local_page_images(first.path()).is_empty());
    // Let it run well past the first dump, then dump again (killing it).
    wait_tick_after(w.log_path(), pid, after + 3, WAIT).unwrap();
    dump_to_server(&mut w, second.path(), &server);
    let last = last_tick_of(w.log_path(), pid).unwrap();
    assert!(last > after + 3);

    let (id1, id2) = (
        recorded_checkpoint(first.path()),
        recorded_checkpoint(second.path()),
    );
    assert!(id1 < id2, "checkpoints {id1} and {id2}");
    let record = std::fs::read_to_string(first.path().join("page-server-checkpoint")).unwrap();
    assert_eq!(record, format!("checkpoint={id1} peer={}\n", server.addr()));

    // The first directory with the second checkpoint is refused, naming both.
    let err = restore_fails(
        first.path(),
        &[
            "--page-server",
            &server.addr(),
            "--checkpoint",
            &id2.to_string(),
        ],
    );
    assert!(
        err.contains(&format!(
            "--checkpoint {id2} does not match checkpoint {id1}"
        )),
        "{err}"
    );
    // A directory whose record is gone is refused with the --checkpoint hint.
    std::fs::remove_file(second.path().join("page-server-checkpoint")).unwrap();
    let err = restore_fails(second.path(), &["--page-server", &server.addr()]);
    assert!(
        err.contains("records no page-server checkpoint") && err.contains("--checkpoint ID"),
        "{err}"
    );
    assert_eq!(taken(&[pid]), None, "a failed restore left {pid} behind");

    // The first directory resumes from the first dump's tick, memory intact.
    let seen = std::fs::read_to_string(w.log_path()).unwrap().len();
    let root = restore_detached(first.path(), &["--page-server", &server.addr()]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
    let deadline = Instant::now() + WAIT;
    let ticks = loop {
        let text = std::fs::read_to_string(w.log_path()).unwrap();
        let lines: Vec<&str> = text[seen..]
            .lines()
            .filter(|l| field(l, "pid") == Some(pid.to_string().as_str()))
            .collect();
        if lines.len() >= 4 {
            for l in &lines {
                assert_eq!(field(l, "bad"), Some("0"), "memory pattern broken: {l}");
            }
            break lines
                .iter()
                .filter_map(|l| cryo_fixtures::parse_tick(l))
                .collect::<Vec<u64>>();
        }
        assert!(
            Instant::now() < deadline,
            "the restored counter did not tick:\n{}",
            &text[seen..]
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        (before + 1..=after + 1).contains(&ticks[0]),
        "resumed at tick {} (first dump between {before} and {after}, second at {last})",
        ticks[0]
    );
    let expected: Vec<u64> = (ticks[0]..ticks[0] + ticks.len() as u64).collect();
    assert_eq!(ticks, expected);
}

/// An unmodified `criu dump --page-server` (CRIU 4.1) into cryo's page server: the
/// checkpoint exported from the store restores with cryo's restorer and with CRIU itself,
/// and the counter counts on over its intact pattern both times.
#[test]
fn criu_dumps_into_our_page_server_and_both_restore_the_export() {
    let server = PageServer::start();
    let mut w = Workload::counter(16).unwrap();
    let pid = w.pid();
    let pids = w.tree_pids();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = server.addr.port().to_string();
    let target = pid.to_string();
    criu41_in(
        dir.path(),
        &[
            "dump",
            "-t",
            &target,
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ],
    );
    w.wait_exit(WAIT);
    assert!(
        local_page_images(dir.path()).is_empty(),
        "pages went to the server"
    );

    let mut export = Command::new(pageserver_bin());
    export
        .args(["export", "--checkpoint", "1", "--store"])
        .arg(server.store())
        .arg("-D")
        .arg(dir.path());
    let out = run_bounded(export, WAIT);
    assert!(
        out.status.success(),
        "export failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );

    for restore_with_criu in [false, true] {
        let deadline = Instant::now() + WAIT;
        while let Some(p) = taken(&pids) {
            assert!(Instant::now() < deadline, "pid {p} did not go away");
            std::thread::sleep(Duration::from_millis(10));
        }
        let last = last_tick_of(w.log_path(), pid).unwrap();
        if restore_with_criu {
            criu41_in(dir.path(), &["restore", "-d"]);
        } else {
            assert_eq!(restore_detached(dir.path(), &[]), pid);
        }
        let guard = TreeGuard::new(pid);
        assert_counter_continues(w.log_path(), pid, last);
        drop(guard);
    }
}

/// Whether something listens on TCP `port` (from /proc/net/tcp, without connecting: a
/// `criu page-server` serves one connection only).
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 3
            && cols[3] == "0A"
            && cols[1].rsplit(':').next() == Some(&format!("{port:04X}"))
    })
}

/// `dumper --criu-page-server 4.1` into CRIU 4.1's own `criu page-server`: the pages land
/// in its directory as CRIU writes them, and with them next to the other images cryo's
/// restorer brings the counter back.
#[test]
fn cryo_dumps_into_criu_page_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ps_dir = tempfile::tempdir().unwrap();
    let mut criu = criu41();
    criu.args([
        "page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-D",
    ])
    .arg(ps_dir.path())
    .args(["-o", "ps.log"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut server = Silent(criu.spawn().unwrap());
    let deadline = Instant::now() + WAIT;
    while !listening(port) {
        assert!(
            Instant::now() < deadline,
            "criu page-server does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut w = Workload::counter(8).unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let images = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    dump_with(&mut w, images.path(), Some(Peer::Criu(addr)), false);
    server.reap();
    assert!(
        local_page_images(images.path()).is_empty(),
        "pages were written locally"
    );
    copy_images(ps_dir.path(), images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
    assert_counter_continues(w.log_path(), pid, last);
}
