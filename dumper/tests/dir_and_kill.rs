//! The image directory a dump is given, and what the dumper leaves when it returns: a
//! directory holding images is refused untouched, a failed dump removes exactly what it
//! created (files and directories), a default-kill dump returns only once the killed
//! tasks have exited, and the binary reports an error on one line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryo_dumper::{DumpError, dump};
use cryo_fixtures::Workload;

mod common;
use common::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dumper() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dumper"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[test]
fn a_directory_holding_a_stale_image_is_refused_and_the_image_kept() {
    let w = Workload::counter(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("core-1.img");
    std::fs::write(&stale, b"an image of an earlier dump").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not an image").unwrap();

    // A live tree: the dump must be refused before anything is written.
    let err = dump(&opts(w.pid(), dir.path(), true)).unwrap_err();
    assert!(matches!(err, DumpError::StaleImages { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains("core-1.img"),
        "{msg}"
    );
    assert_eq!(names(dir.path()), ["core-1.img", "notes.txt"]);
    assert_eq!(
        std::fs::read(&stale).unwrap(),
        b"an image of an earlier dump"
    );
    assert_eq!(tracer_of(w.pid()), "TracerPid:\t0");

    // The tester's case: a missing pid into that directory leaves the image in place.
    let out = dumper()
        .args(["dump", "-t", "99999999", "-D"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("core-1.img"), "{stderr}");
    assert_eq!(names(dir.path()), ["core-1.img", "notes.txt"]);

    // `stats-dump` alone counts as an image too.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join("stats-dump"), b"x").unwrap();
    let err = dump(&opts(w.pid(), dir2.path(), true)).unwrap_err();
    assert!(matches!(err, DumpError::StaleImages { .. }), "{err}");
    assert_eq!(names(dir2.path()), ["stats-dump"]);

    // So does the page-server record of an earlier dump: it would tie DIR to its checkpoint.
    let dir3 = tempfile::tempdir().unwrap();
    let record = dir3.path().join(cryo_pageserver::record::FILE);
    std::fs::write(&record, b"checkpoint=9 peer=127.0.0.1:1\n").unwrap();
    let err = dump(&opts(w.pid(), dir3.path(), true)).unwrap_err();
    assert!(matches!(err, DumpError::StaleImages { .. }), "{err}");
    assert!(record.exists());
}

#[test]
fn a_complete_dump_is_still_refused_with_its_own_message() {
    let w = Workload::counter(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(w.pid(), dir.path(), true)).unwrap();
    let before = names(dir.path());
    let err = dump(&opts(w.pid(), dir.path(), true)).unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists: the directory holds a finished dump"),
        "{err}"
    );
    assert_eq!(names(dir.path()), before);
}

#[test]
fn a_failed_dump_removes_the_directories_it_created() {
    let base = tempfile::tempdir().unwrap();
    // Before the tree is frozen (a missing pid), through the binary.
    let created = base.path().join("new/sub");
    let out = dumper()
        .args(["dump", "-t", "99999999", "-D"])
        .arg(&created)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!base.path().join("new").exists(), "created dirs removed");
    assert!(base.path().exists());

    // After images were written: the netlink socket fails the dump in the fd scan of
    // a tree with some images already out.
    let script = "import socket,time\ns=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\nprint('ready',flush=True)\ntime.sleep(60)";
    let child = ReadyChild::spawn(Command::new("/usr/bin/python3").arg("-c").arg(script));
    let pid = child.pid();
    let fresh = base.path().join("fresh");
    let result = dump(&opts(pid, &fresh, true));
    drop(child);
    assert!(result.is_err());
    assert!(
        !fresh.exists(),
        "the directory this dump created is removed"
    );

    // An existing directory is kept, with the files that were there.
    let kept = base.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("notes.txt"), b"mine").unwrap();
    let err = dump(&opts(99_999_999, &kept, true)).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(names(&kept), ["notes.txt"]);
}

#[test]
fn a_default_kill_dump_returns_once_the_killed_tasks_have_exited() {
    let mut w = Workload::threads(256, 4).unwrap();
    let pid = w.pid();
    let tids = thread_ids_of(pid);
    assert!(tids.len() >= 4, "{tids:?}");
    let dir = tempfile::tempdir().unwrap();
    // Through the binary: the dumper is then not the parent (in-process, the tracer's
    // waitpid would reap our own child).
    let out = dumper()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // We are the parent and have not reaped: the leader is a zombie, the threads gone.
    for &tid in &tids {
        let state = cryo_fixtures::proc_state(tid);
        assert!(
            matches!(state, None | Some('Z') | Some('X')),
            "task {tid} of {pid} still {state:?} after the dump returned"
        );
    }
    assert!(w.wait_exit(Duration::from_secs(5)).is_some());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

fn thread_ids_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

#[test]
fn the_dumper_binary_prints_an_error_on_one_line_even_with_a_backtrace_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dumper()
        .args(["dump", "-t", "99999999", "-D"])
        .arg(dir.path().join("x"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("dumper: dump of 99999999 into ")
            && stderr.contains("process 99999999 does not exist"),
        "{stderr}"
    );

    let out = dumper().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("dumper "),
        "{:?}",
        out
    );
}
