//! Dumps that must fail: a clear error naming the process and the cause, no inventory,
//! and the tree left running and untraced.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryo_dumper::{DumpError, dump};
use cryo_fixtures::Workload;

mod common;
use common::*;

#[test]
fn a_netlink_socket_fails_the_dump_and_leaves_the_tree_untouched() {
    let script = "import socket,time\ns=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\nprint('ready',flush=True)\ntime.sleep(60)";
    let mut child = ReadyChild::spawn(Command::new("/usr/bin/python3").arg("-c").arg(script));
    let pid = child.pid();
    let (maps_before, fds_before) = (maps(pid), fd_list(pid));
    let dir = tempfile::tempdir().unwrap();

    let err = dump(&opts(pid, dir.path(), false)).unwrap_err();
    assert!(
        matches!(
            err,
            DumpError::Files(cryo_dumper::files::FilesError::Unsupported { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&pid.to_string()) && msg.contains("socket"),
        "{msg}"
    );

    assert!(!dir.path().join("inventory.img").exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no image left behind"
    );
    assert_eq!(maps(pid), maps_before);
    assert_eq!(fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert!(child.is_running(), "still running");
}

#[test]
fn a_target_killed_mid_dump_fails_cleanly_without_inventory() {
    let mut w = Workload::counter(256).unwrap();
    let pid = w.pid();
    let dir = tempfile::tempdir().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        // SAFETY: kill(2) on the workload's pid, still unreaped (our child).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let result = dump(&opts(pid, dir.path(), true));
    killer.join().unwrap();
    if result.is_ok() {
        // The dump won the race; the kill came after the inventory. Nothing to check.
        eprintln!("dump finished before the kill landed; race not exercised");
        return;
    }
    assert!(!dir.path().join("inventory.img").exists());
    let _ = w.wait_exit(Duration::from_secs(2));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn the_dumper_binary_reports_success_and_names_a_missing_pid() {
    let w = Workload::counter(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let out = Command::new(env!("CARGO_BIN_EXE_dumper"))
        .args(["dump", "-t", &w.pid().to_string(), "-D"])
        .arg(&img)
        .arg("--leave-running")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dumped 1 processes, 1 threads"));
    assert!(img.join("inventory.img").exists());

    // A pid that cannot exist (above pid_max).
    let out = Command::new(env!("CARGO_BIN_EXE_dumper"))
        .args(["dump", "-t", "99999999", "-D"])
        .arg(dir.path().join("none"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("process 99999999 does not exist"), "{err}");
    assert!(!dir.path().join("none/inventory.img").exists());
}

#[test]
fn a_mapping_of_a_deleted_file_fails_the_dump_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone");
    let script = "import mmap,os,sys,time\nf=open(sys.argv[1],'w+b')\nf.write(b'a'*4096)\nf.flush()\n\
                  m=mmap.mmap(f.fileno(),4096)\nf.close()\nos.unlink(sys.argv[1])\nprint('ready',flush=True)\ntime.sleep(60)";
    let mut child = ReadyChild::spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(&path),
    );
    let pid = child.pid();
    let img = dir.path().join("img");
    let err = dump(&opts(pid, &img, false)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DumpError::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains("deleted file") && msg.contains("gone"),
        "{msg}"
    );
    assert!(!img.join("inventory.img").exists());
    assert!(child.is_running());
}

#[test]
fn an_io_uring_fd_fails_the_dump_naming_pid_fd_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("uring.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <string.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
         int main(void) { unsigned char params[120]; memset(params, 0, sizeof(params));\n\
         long fd = syscall(SYS_io_uring_setup, 4, params);\n\
         printf(\"ready %ld\\n\", fd); fflush(stdout); for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.path().join("uring");
    assert!(
        Command::new("gcc")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let mut child = ReadyChild::spawn(&mut Command::new(&bin));
    let fd: i32 = child
        .first_line
        .trim()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(fd >= 0, "io_uring_setup failed: {}", child.first_line);
    let pid = child.pid();
    let (maps_before, fds_before) = (maps(pid), fd_list(pid));

    let img = dir.path().join("img");
    let err = dump(&opts(pid, &img, false)).unwrap_err();
    match &err {
        DumpError::Files(cryo_dumper::files::FilesError::Unsupported {
            pid: p,
            fd: f,
            kind,
        }) => {
            assert_eq!((*p, *f), (pid, fd));
            assert!(kind.contains("io_uring"), "{kind}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(!img.join("inventory.img").exists());
    assert_eq!(maps(pid), maps_before);
    assert_eq!(fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert!(child.is_running());
}

#[test]
fn a_directory_with_a_complete_dump_is_refused_before_freezing() {
    let w = Workload::counter(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(w.pid(), dir.path(), true)).unwrap();
    let inventory = std::fs::read(dir.path().join("inventory.img")).unwrap();

    let err = dump(&opts(w.pid(), dir.path(), false)).unwrap_err();
    assert!(matches!(err, DumpError::Images(_)), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("inventory.img")).unwrap(),
        inventory
    );
    let tick = w.last_tick(w.pid()).unwrap_or(0);
    w.wait_tick_after(w.pid(), tick, Duration::from_secs(5))
        .unwrap();
}

/// A thread id given as the tree's root is named as such, with the process to dump.
#[test]
fn a_thread_id_as_root_is_refused_naming_its_process() {
    let w = Workload::threads(2, 2).unwrap();
    let pid = w.pid();
    w.wait_tick_after(pid, 1, Duration::from_secs(10)).unwrap();
    let tid = *cryo_fixtures::thread_ids(pid).last().unwrap();
    assert_ne!(tid, pid);
    let dir = tempfile::tempdir().unwrap();
    let err = dump(&opts(tid, dir.path(), true)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{tid} is a thread of process {pid}: dump the process (-t {pid})")
    );
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
}
