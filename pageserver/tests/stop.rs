//! However `pageserver serve` stops — SIGKILL, SIGTERM, SIGINT — the read-only commands
//! (`list`, `stats`, `export`) can read the store afterwards; only CLOSEd checkpoints are
//! listed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ServerProcess, listed_ids, patterned_pages, run_pageserver};
use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::DstId;
use rustix::process::Signal;

/// Sends one checkpoint of `pages` pages and CLOSEs it; returns its id.
fn commit_checkpoint(server: &ServerProcess, pid: u64, pages: usize) -> u64 {
    let mut c = Client::connect(server.addr).unwrap();
    let hello = c.hello().unwrap();
    c.open2(DstId::pid(pid)).unwrap();
    c.add_pages(
        DstId::pid(pid),
        0x5555_0000_0000,
        &patterned_pages(pid << 20, pages),
        false,
    )
    .unwrap();
    c.close().unwrap();
    hello.checkpoint_id
}

/// Starts a session that sends pages but no CLOSE, and waits until the server has written
/// some of them to a segment of its own (the store then holds `segments_before + 1`).
fn start_uncommitted_session(server: &ServerProcess, store: &Path, pid: u64) -> (Client, u64) {
    let segments_before = std::fs::read_dir(store.join("segments")).unwrap().count();
    let mut c = Client::connect(server.addr).unwrap();
    let hello = c.hello().unwrap();
    c.open2(DstId::pid(pid)).unwrap();
    c.add_pages(
        DstId::pid(pid),
        0x7777_0000_0000,
        &patterned_pages(0xabc << 20, 256),
        false,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(store.join("segments")).unwrap().count() <= segments_before {
        assert!(
            Instant::now() < deadline,
            "the uncommitted session's segment never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (c, hello.checkpoint_id)
}

/// `pageserver list` succeeds and returns the listed ids and its stderr.
fn list(store: &Path) -> (Vec<u64>, String) {
    let out = run_pageserver(&["list"], store);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "list failed ({}): {stderr}",
        out.status
    );
    (listed_ids(&out.stdout), stderr)
}

fn assert_stops_by_itself(server: &mut ServerProcess) {
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server exits within 10 s of the signal");
    assert!(status.success(), "clean shutdown exits 0, got {status}");
}

#[test]
fn list_reads_the_store_after_sigkill_and_repairs_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    let id = commit_checkpoint(&server, 31, 64);
    server.kill9();

    let (ids, stderr) = list(tmp.path());
    assert_eq!(ids, vec![id]);
    assert!(
        stderr.contains("repaired"),
        "the repair is logged: {stderr}"
    );
    // Repaired for good: the next read-only open needs no repair; stats works too.
    let (ids, stderr) = list(tmp.path());
    assert_eq!(ids, vec![id]);
    assert!(!stderr.contains("repair"), "no second repair: {stderr}");
    let out = run_pageserver(&["stats"], tmp.path());
    assert!(out.status.success(), "stats after the repair");
}

#[test]
fn sigkill_while_idle_leaves_an_empty_store_listable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    server.kill9();
    let (ids, _) = list(tmp.path());
    assert!(ids.is_empty());
}

#[test]
fn a_session_cut_by_sigkill_is_not_listed_after_the_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    let committed = commit_checkpoint(&server, 1, 32);
    let (client, cut) = start_uncommitted_session(&server, tmp.path(), 2);
    server.kill9();
    drop(client);

    let (ids, _) = list(tmp.path());
    assert_eq!(ids, vec![committed], "checkpoint {cut} was never CLOSEd");
    let out = run_pageserver(&["stats", "--checkpoint", &cut.to_string()], tmp.path());
    assert!(!out.status.success(), "no stats for the cut checkpoint");
}

#[test]
fn sigterm_stops_the_server_cleanly_and_list_needs_no_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    let id = commit_checkpoint(&server, 7, 64);
    server.signal(Signal::TERM);
    assert_stops_by_itself(&mut server);

    let (ids, stderr) = list(tmp.path());
    assert_eq!(ids, vec![id]);
    assert!(
        !stderr.contains("repair"),
        "a clean stop needs no repair: {stderr}"
    );
}

#[test]
fn sigint_while_idle_stops_the_server_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    server.signal(Signal::INT);
    assert_stops_by_itself(&mut server);
    let (ids, stderr) = list(tmp.path());
    assert!(ids.is_empty());
    assert!(
        !stderr.contains("repair"),
        "a clean stop needs no repair: {stderr}"
    );
}

#[test]
fn sigterm_aborts_a_session_without_close_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn_with(tmp.path(), &["--shutdown-grace", "1"]);
    let committed = commit_checkpoint(&server, 1, 32);
    let (client, cut) = start_uncommitted_session(&server, tmp.path(), 2);
    server.signal(Signal::TERM);
    assert_stops_by_itself(&mut server);
    drop(client);

    let (ids, stderr) = list(tmp.path());
    assert_eq!(ids, vec![committed], "checkpoint {cut} was never CLOSEd");
    assert!(
        !stderr.contains("repair"),
        "a clean stop needs no repair: {stderr}"
    );
}

#[test]
fn a_session_that_closes_within_the_grace_period_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn_with(tmp.path(), &["--shutdown-grace", "20"]);
    let (client, id) = start_uncommitted_session(&server, tmp.path(), 3);
    server.signal(Signal::TERM);
    // New sessions are refused once the shutdown started (bounded wait for the listener
    // to close).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect_timeout(server.addr, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    client.close().unwrap();
    assert_stops_by_itself(&mut server);

    let (ids, _) = list(tmp.path());
    assert_eq!(ids, vec![id]);
}
