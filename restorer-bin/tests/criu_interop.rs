//! CRIU 4.2's own image sets restore with cryo and keep working, judged from outside:
//! the workloads' logs continue with consecutive numbers and an intact memory
//! pattern, threads keep their tids, children keep their parent.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cryo_fixtures::{TreeGuard, field, parse_tick};

const TICK_STDOUT: &[u8] = b"tick 1\ntick 2\n";

fn skip_if_taken(set: &str, pids: &[i32]) -> bool {
    // A tree killed by the previous test of this set may take a moment to be reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while taken(pids).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(pid) = taken(pids) {
        println!("SKIP {set}: pid {pid} of the dumped tree is in use on this system");
        return true;
    }
    false
}

/// Checks that `lines` (after the restore) continue `pid`'s ticks from `last` with
/// the memory pattern intact.
fn assert_ticks_continue(lines: &[String], pid: i32, last: u64) {
    let pid = pid.to_string();
    let ticks: Vec<u64> = lines
        .iter()
        .filter(|l| field(l, "pid") == Some(pid.as_str()))
        .map(|l| {
            assert_eq!(field(l, "bad"), Some("0"), "memory pattern broken: {l}");
            parse_tick(l).unwrap()
        })
        .collect();
    let expected: Vec<u64> = (last + 1..=last + ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "ticks after restore: {lines:?}");
}

#[test]
fn criu_counter_set_restores_and_keeps_counting() {
    let _lock = lock_set("counter");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    prepare_criu_files("counter", TICK_STDOUT);
    let log = Path::new(FX).join("counter.log");
    let before = line_count(&log);

    let root = restore_detached(&criu_set("counter"), &[]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, 13131);

    let lines = wait_new_lines(&log, before, 2, Duration::from_secs(10));
    assert_ticks_continue(&lines, 13131, 2);
    let comm = std::fs::read_to_string("/proc/13131/comm").unwrap();
    assert_eq!(comm.trim(), "mem");
    let fd3 = std::fs::read_link("/proc/13131/fd/3").unwrap();
    assert_eq!(fd3, Path::new("/tmp/fx/counter.log"));
    let stdout = std::fs::read_to_string("/tmp/fx/counter.out").unwrap();
    assert!(
        stdout.starts_with("tick 1\ntick 2\ntick "),
        "stdout continues at its offset: {stdout:?}"
    );
}

#[test]
fn criu_threads4_set_restores_threads_with_their_tids() {
    let tids = [13178, 13180, 13181, 13182, 13183];
    let _lock = lock_set("threads4");
    if skip_if_taken("threads4", &tids) {
        return;
    }
    prepare_criu_files("threads4", TICK_STDOUT);
    let log = Path::new(FX).join("threads4.log");
    let before = line_count(&log);

    let root = restore_detached(&criu_set("threads4"), &[]);
    let _guard = TreeGuard::new(root);

    assert_eq!(cryo_fixtures::thread_ids(root), tids);
    let lines = wait_new_lines(&log, before, 3, Duration::from_secs(10));
    assert_ticks_continue(&lines, 13178, 2);
    // Every worker thread keeps counting: its counter grows from line to line.
    for t in 0..4 {
        let name = format!("t{t}");
        let counts: Vec<u64> = lines
            .iter()
            .map(|l| field(l, &name).unwrap().parse().unwrap())
            .collect();
        assert!(
            counts[0] > 20,
            "{name} continues from the dumped count: {counts:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[1] > w[0]),
            "{name} stalled: {counts:?}"
        );
    }
}

#[test]
fn criu_pipe_tree_set_restores_parent_children_and_pipe() {
    let pids = [13236, 13238, 13239];
    let _lock = lock_set("pipe-tree");
    if skip_if_taken("pipe-tree", &pids) {
        return;
    }
    prepare_criu_files("pipe-tree", b"");
    let log = Path::new(FX).join("pipe-tree.log");
    let before = line_count(&log);

    let root = restore_detached(&criu_set("pipe-tree"), &[]);
    let _guard = TreeGuard::new(root);

    let lines = wait_new_lines(&log, before, 4, Duration::from_secs(10));
    for child in ["13238", "13239"] {
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| field(l, "pid") == Some(child))
            .map(|l| field(l, "seq").unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs[0], 4, "child {child} continues after seq 3: {lines:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    assert!(
        lines.iter().all(|l| field(l, "gaps") == Some("0")),
        "{lines:?}"
    );
    for child in [13238, 13239] {
        assert_eq!(proc_status_field(child, "PPid"), Some(13236));
    }
}

#[test]
fn criu_python3_set_restores_and_keeps_looping() {
    let _lock = lock_set("python3");
    if skip_if_taken("python3", &[13374]) {
        return;
    }
    prepare_criu_files("python3", b"");

    let root = restore_detached(&criu_set("python3"), &[]);
    let _guard = TreeGuard::new(root);

    // The loop sleeps 0.1 s per iteration: every wakeup is a voluntary switch.
    let first = proc_status_field(root, "voluntary_ctxt_switches").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let second = proc_status_field(root, "voluntary_ctxt_switches").unwrap();
    assert!(
        second >= first + 5,
        "python3 is not looping: {first} -> {second}"
    );
    let cmdline = std::fs::read(format!("/proc/{root}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/usr/bin/python3\0-c\0"));
}

/// Restores CRIU's `counter` set (pid 13131) with a restorer that stays as the waiter, and
/// returns it, with a guard on the restored tree, once the counter has logged a new line.
fn restore_counter_and_wait() -> (std::process::Child, TreeGuard) {
    prepare_criu_files("counter", TICK_STDOUT);
    let log = Path::new(FX).join("counter.log");
    let before = line_count(&log);

    let mut cmd = restorer();
    cmd.args(["restore", "-D"]).arg(criu_set("counter"));
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = TreeGuard::new(13131);
    wait_new_lines(&log, before, 1, Duration::from_secs(10));
    (child, guard)
}

#[test]
fn restorer_waits_and_dies_by_the_roots_signal() {
    let _lock = lock_set("counter");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    let (mut child, _guard) = restore_counter_and_wait();
    assert_eq!(proc_status_field(13131, "PPid"), Some(child.id() as u64));

    // SAFETY: signalling the restored root, which this test owns.
    unsafe { libc::kill(13131, libc::SIGTERM) };
    let status = wait_status(&mut child, Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn pid_in_use_is_refused_before_anything_changes() {
    let _lock = lock_set("counter");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    prepare_criu_files("counter", TICK_STDOUT);
    let root = restore_detached(&criu_set("counter"), &[]);
    let _guard = TreeGuard::new(root);
    let start_time = std::fs::read_to_string("/proc/13131/stat").unwrap();

    let mut cmd = restorer();
    cmd.args(["restore", "-d", "-D"]).arg(criu_set("counter"));
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pid 13131 (process) is already in use"),
        "{err}"
    );
    // The running process is the same one (same start time field).
    let again = std::fs::read_to_string("/proc/13131/stat").unwrap();
    let start = |s: &str| s.split_whitespace().nth(21).map(str::to_string);
    assert_eq!(start(&start_time), start(&again));
}

#[test]
fn root_exit_code_reaches_the_caller() {
    let pids = [13236, 13238, 13239];
    let _lock = lock_set("pipe-tree");
    if skip_if_taken("pipe-tree", &pids) {
        return;
    }
    prepare_criu_files("pipe-tree", b"");
    let log = Path::new(FX).join("pipe-tree.log");
    let before = line_count(&log);

    let mut cmd = restorer();
    cmd.args(["restore", "-D"]).arg(criu_set("pipe-tree"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = TreeGuard::new(13236);
    wait_new_lines(&log, before, 2, Duration::from_secs(10));

    // Without writers the parent's read returns 0 and it exits with status 1.
    for child in [13238, 13239] {
        // SAFETY: signalling processes of the restored tree this test owns.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    let status = wait_status(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("parent read returned 0, exiting"), "{text}");
}

#[test]
fn failed_restore_kills_every_process_it_created() {
    // Both sets run /tmp/fx/mem, which this test makes non-executable for a moment.
    let _lock = lock_set("counter");
    let _lock2 = lock_set("threads4");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    prepare_criu_files("counter", TICK_STDOUT);
    use std::os::unix::fs::PermissionsExt;
    let exe = Path::new(FX).join("mem");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut cmd = restorer();
    cmd.args(["restore", "-d", "-D"]).arg(criu_set("counter"));
    let out = run_bounded(cmd, Duration::from_secs(20));
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _guard = TreeGuard::new(13131);

    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("process 13131") && err.contains("PR_SET_MM_MAP"),
        "{err}"
    );
    // The half-built process is gone (a zombie at most, until init reaps it).
    std::thread::sleep(Duration::from_millis(200));
    let state = std::fs::read_to_string("/proc/13131/stat").unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "13131 still alive: {state}"
    );
}

#[test]
fn truncated_image_is_named_and_nothing_is_started() {
    let _lock = lock_set("counter");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_images(&criu_set("counter"), dir.path());
    let core = dir.path().join("core-13131.img");
    let len = std::fs::metadata(&core).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&core)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let mut cmd = restorer();
    cmd.args(["restore", "-d", "-D"]).arg(dir.path());
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core-13131.img"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(taken(&[13131]).is_none(), "a process was started");
}

#[test]
fn signal_to_the_waiting_restorer_reaches_the_root() {
    let _lock = lock_set("counter");
    if skip_if_taken("counter", &[13131]) {
        return;
    }
    let (mut child, _guard) = restore_counter_and_wait();

    // SAFETY: signalling the restorer this test started. (The dumped workload
    // ignores SIGINT and SIGQUIT, as background jobs do, so SIGTERM it is.)
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_status(&mut child, Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let state = std::fs::read_to_string("/proc/13131/stat").unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "root still alive: {state}"
    );
}
