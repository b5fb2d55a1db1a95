//! The tracee writes its own pages into fds the dumper plants in it. What that must
//! not change: a failed write leaves the tree running with its maps, fds, signals and
//! limits as they were; the tracee's own file-size limit does not stop a dump it can
//! allow, and is put back.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryo_dumper::dump;
use cryo_fixtures::Workload;

mod common;
use common::*;

/// The whole chain of an error's messages, for asserting on the cause.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// `SigPnd | ShdPnd` of `pid`.
fn pending(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["SigPnd:", "ShdPnd:"]
        .iter()
        .map(|name| {
            let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
            u64::from_str_radix(v.trim(), 16).unwrap()
        })
        .fold(0, |a, b| a | b)
}

/// The "Max file size" line of /proc/PID/limits.
fn fsize_limit(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A python3 process with 16 MiB of touched memory under RLIMIT_FSIZE `soft`:`hard`.
fn limited_python(soft: &str, hard: &str) -> ReadyChild {
    let script = "import resource,sys,time\n\
        lim=lambda v: resource.RLIM_INFINITY if v=='unlimited' else int(v)\n\
        resource.setrlimit(resource.RLIMIT_FSIZE,(lim(sys.argv[1]),lim(sys.argv[2])))\n\
        buf=bytearray(16<<20)\n\
        for i in range(0,len(buf),4096): buf[i]=1\n\
        print('ready',flush=True)\n\
        time.sleep(60)";
    ReadyChild::spawn(
        Command::new("/usr/bin/python3")
            .args(["-c", script, soft, hard])
            .stderr(std::process::Stdio::null()),
    )
}

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the tests run as root)");
        SmallFs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Checks the tree was left as it was: same maps and fds, untraced, no new signal.
fn assert_untouched(
    child: &mut ReadyChild,
    maps_before: &str,
    fds_before: &FdSet,
    sig_before: u64,
) {
    let pid = child.pid();
    assert!(child.is_running(), "still running");
    assert_eq!(maps(pid), maps_before);
    assert_eq!(&fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert_eq!(pending(pid), sig_before, "a signal was left pending");
}

type FdSet = std::collections::BTreeSet<(String, String)>;

#[test]
fn a_full_disk_fails_the_dump_and_leaves_the_tree_as_it_was() {
    let fs = SmallFs::mount("2m");
    let mut child = limited_python("unlimited", "unlimited");
    let pid = child.pid();
    let (maps_before, fds_before, sig_before) = (maps(pid), fd_list(pid), pending(pid));

    let err = dump(&opts(pid, fs.path(), false)).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("pwritev") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(!fs.path().join("inventory.img").exists());
    assert_eq!(
        std::fs::read_dir(fs.path()).unwrap().count(),
        0,
        "nothing left in the directory"
    );
    assert_untouched(&mut child, &maps_before, &fds_before, sig_before);
}

#[test]
fn a_low_soft_file_size_limit_is_raised_for_the_dump_and_put_back() {
    let mut child = limited_python("1048576", "unlimited");
    let pid = child.pid();
    let before = fsize_limit(pid);
    assert_eq!(before, "Max file size 1048576 unlimited bytes");
    let sig_before = pending(pid);

    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();
    let pages = std::fs::metadata(dir.path().join("pages-1.img"))
        .unwrap()
        .len();
    assert!(pages > 16 << 20, "pages image of {pages} bytes");
    assert!(child.is_running());
    assert_eq!(fsize_limit(pid), before);
    assert_eq!(pending(pid), sig_before, "SIGXFSZ or another signal left");
}

#[test]
fn a_hard_file_size_limit_below_the_pages_fails_the_dump_by_name() {
    let mut child = limited_python("1048576", "1048576");
    let pid = child.pid();
    let (maps_before, fds_before, sig_before) = (maps(pid), fd_list(pid), pending(pid));
    let before = fsize_limit(pid);

    let dir = tempfile::tempdir().unwrap();
    let err = dump(&opts(pid, dir.path(), false)).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains(&pid.to_string()) && msg.contains("RLIMIT_FSIZE"),
        "{msg}"
    );
    assert!(!dir.path().join("inventory.img").exists());
    assert_eq!(fsize_limit(pid), before);
    assert_untouched(&mut child, &maps_before, &fds_before, sig_before);
}

#[test]
fn a_page_server_hanging_up_mid_dump_leaves_the_tree_as_it_was() {
    let (addr, server) = criu_like_server(Some(1 << 20));
    let w = Workload::counter(32).unwrap();
    let pid = w.pid();
    let (maps_before, fds_before, sig_before) = (maps(pid), fd_list(pid), pending(pid));

    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(pid, dir.path(), false);
    o.page_server = Some(addr);
    let err = dump(&o).unwrap_err();
    server.join().unwrap();
    let msg = chain(&err);
    assert!(
        msg.contains("sendmsg") || msg.contains(&addr.to_string()),
        "{msg}"
    );
    assert!(!dir.path().join("inventory.img").exists());

    assert!(Path::new(&format!("/proc/{pid}")).exists(), "still alive");
    assert_eq!(maps(pid), maps_before);
    assert_eq!(fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert_eq!(pending(pid), sig_before, "SIGPIPE left pending");
    // It goes on counting.
    let last = cryo_fixtures::last_tick_of(w.log_path(), pid).unwrap_or(0);
    cryo_fixtures::wait_tick_after(w.log_path(), pid, last + 1, Duration::from_secs(10)).unwrap();
}

/// SIGTERM (or Ctrl-C) while the tree is frozen and its pages are on their way to a
/// page server that stopped reading: the dumper stops within seconds instead of waiting
/// for the socket timeout, releases the tree as it was (no injected fd, no pending
/// SIGPIPE, not traced, still counting) and exits 128 + 15 with nothing complete in DIR.
#[test]
fn sigterm_mid_dump_releases_the_tree_as_it_was() {
    let (addr, _server) = criu_like_server_with(PeerEnd::Stall);
    let w = Workload::counter(64).unwrap();
    let pid = w.pid();
    w.wait_tick_after(pid, 1, Duration::from_secs(10)).unwrap();
    let (maps_before, fds_before, sig_before) = (maps(pid), fd_list(pid), pending(pid));

    let dir = tempfile::tempdir().unwrap();
    let mut dumper = Command::new(env!("CARGO_BIN_EXE_dumper"))
        .args([
            "dump",
            "-t",
            &pid.to_string(),
            "--leave-running",
            "--page-server",
        ])
        .arg(addr.to_string())
        .arg("-D")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Frozen and stuck in the planted socket: the target is traced.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tracer_of(pid) == "TracerPid:\t0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the dump never froze the target"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stopped_at = std::time::Instant::now();
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(dumper.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = dumper.try_wait().unwrap() {
            break status;
        }
        if stopped_at.elapsed() > Duration::from_secs(10) {
            let _ = dumper.kill();
            panic!("the dumper did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(dumper.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("signal 15"), "{err}");
    assert!(!dir.path().join("inventory.img").exists());

    assert!(Path::new(&format!("/proc/{pid}")).exists(), "still alive");
    assert_eq!(maps(pid), maps_before);
    assert_eq!(fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert_eq!(pending(pid), sig_before, "a signal was left pending");
    let last = cryo_fixtures::last_tick_of(w.log_path(), pid).unwrap_or(0);
    cryo_fixtures::wait_tick_after(w.log_path(), pid, last + 2, Duration::from_secs(10)).unwrap();
}
