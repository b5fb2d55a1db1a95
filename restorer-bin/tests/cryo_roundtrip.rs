//! cryo's own dumper → cryo's restorer, for every fixtures workload: each one must
//! carry on where it was, judged from its log and /proc.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use cryo_fixtures::{
    EVLOOP_EFD_COUNT, TreeGuard, Workload, field, last_tick_of, wait_for_log_line, wait_tick_after,
};

const WAIT: Duration = Duration::from_secs(15);

/// Runs the dumper in a process of its own (this test binary, running
/// [`dump_helper`]): a tracer that exits releases the killed tree for reaping.
fn dump(pid: i32, dir: &Path) {
    dump_with(pid, dir, false);
}

fn dump_with(pid: i32, dir: &Path, shell_job: bool) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    if shell_job {
        cmd.env("CRYO_TEST_DUMP_SHELL_JOB", "1");
    }
    cmd.args(["--ignored", "--exact", "dump_helper", "--nocapture"])
        .env("CRYO_TEST_DUMP_PID", pid.to_string())
        .env("CRYO_TEST_DUMP_DIR", dir);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success() && dir.join("inventory.img").exists(),
        "dump of {pid} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "helper: dumps CRYO_TEST_DUMP_PID when run by another test in a child process"]
fn dump_helper() {
    dump_from_env();
}

/// Dumps (and so kills) the workload's tree, then waits until its pids are free again.
fn dump_and_clear(w: &mut Workload, dir: &Path) {
    let pids = w.tree_pids();
    dump(w.pid(), dir);
    w.wait_exit(WAIT);
    wait_gone(&pids);
}

/// Dumps the workload's tree with CRIU 4.1 (which kills it), then waits until its pids
/// are free again.
fn criu_dump_and_clear(w: &mut Workload, dir: &Path) {
    let pids = w.tree_pids();
    criu41_in(dir, &["dump", "-t", &w.pid().to_string()]);
    w.wait_exit(WAIT);
    wait_gone(&pids);
}

fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + WAIT;
    while let Some(pid) = taken(pids) {
        assert!(Instant::now() < deadline, "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ticks of `pid` in `log` after `after`, each with an intact pattern if it says so.
fn ticks_after(log: &Path, pid: i32, after: u64) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap();
    let pid = pid.to_string();
    text.lines()
        .filter(|l| field(l, "pid") == Some(pid.as_str()))
        .filter_map(|l| {
            if let Some(bad) = field(l, "bad") {
                assert_eq!(bad, "0", "memory pattern broken: {l}");
            }
            cryo_fixtures::parse_tick(l)
        })
        .filter(|&t| t > after)
        .collect()
}

fn assert_consecutive(ticks: &[u64], from: u64) {
    let expected: Vec<u64> = (from..from + ticks.len() as u64).collect();
    assert_eq!(ticks, expected);
}

/// Dumps `w` with cryo's dumper once it has ticked twice, restores it with `restore`
/// (which returns the restored root), and checks that the same pid logs `more`
/// consecutive ticks on from the last one before the dump.
fn counts_on_after(mut w: Workload, more: u64, restore: impl FnOnce(&Path) -> i32) {
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore(images.path());
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);

    wait_tick_after(w.log_path(), pid, last + more, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, last), last + 1);
}

/// Checks a restored pipe tree: both children are `pid`'s again and tick on, and on
/// SIGUSR1 the parent finds the 1000 unread bytes intact in the pipe.
fn assert_pipe_tree_lives(log: &Path, pid: i32, children: &[i32]) {
    for &child in children {
        assert_eq!(proc_status_field(child, "PPid"), Some(pid as u64));
        let last = last_tick_of(log, child).unwrap();
        wait_tick_after(log, child, last + 2, WAIT).unwrap();
    }
    signal(pid, libc::SIGUSR1);
    let line = wait_for_log_line(log, |l| l.starts_with("pipe bytes="), WAIT).unwrap();
    assert_eq!(line, "pipe bytes=1000 ok=1");
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process of the test's own restored tree.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn cryo_counter_continues_after_restore() {
    counts_on_after(Workload::counter(16).unwrap(), 3, |dir| {
        restore_detached(dir, &[])
    });
}

#[test]
fn cryo_threads_keep_their_tids_and_count() {
    let mut w = Workload::threads(8, 4).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let tids = cryo_fixtures::thread_ids(pid);
    assert_eq!(tids.len(), 5);

    dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);

    assert_eq!(cryo_fixtures::thread_ids(root), tids);
    wait_tick_after(w.log_path(), pid, last + 3, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, last), last + 1);
    let text = std::fs::read_to_string(w.log_path()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| cryo_fixtures::parse_tick(l).is_some_and(|t| t > last))
        .collect();
    for t in 0..4 {
        let name = format!("t{t}");
        let counts: Vec<u64> = lines
            .iter()
            .map(|l| field(l, &name).unwrap().parse().unwrap())
            .collect();
        assert!(
            counts.windows(2).all(|c| c[1] > c[0]),
            "{name} stalled: {counts:?}"
        );
    }
}

#[test]
fn cryo_pipe_tree_keeps_unread_bytes() {
    let mut w = Workload::pipe_tree(1000).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    let children: Vec<i32> = w.tree_pids().into_iter().filter(|&p| p != pid).collect();
    assert_eq!(children.len(), 2);
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_and_clear(&mut w, images.path());
    let before = line_count(w.log_path());
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);

    assert_pipe_tree_lives(w.log_path(), pid, &children);
    assert!(line_count(w.log_path()) > before);
}

#[test]
fn cryo_files_signals_and_itimer_survive() {
    let mut w = Workload::file_sig().unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let alarms_at = |tick: u64| -> u64 {
        let text = std::fs::read_to_string(w.log_path()).unwrap();
        text.lines()
            .find(|l| cryo_fixtures::parse_tick(l) == Some(tick))
            .and_then(|l| field(l, "alarms")?.parse().ok())
            .unwrap()
    };
    let alarms_before = alarms_at(last);
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);

    let now = wait_tick_after(w.log_path(), pid, last + 3, WAIT).unwrap();
    assert!(
        alarms_at(now) > alarms_before,
        "the itimer no longer fires ({alarms_before} alarms at tick {last}):\n{}",
        std::fs::read_to_string(w.log_path()).unwrap()
    );
    let text = std::fs::read_to_string(w.log_path()).unwrap();
    let line = text
        .lines()
        .find(|l| cryo_fixtures::parse_tick(l) == Some(now))
        .unwrap();
    assert_eq!(field(line, "rw"), Some("1234"), "{line}");
    assert_eq!(field(line, "ro"), Some("77"), "{line}");

    signal(pid, libc::SIGUSR1);
    let log = w.log_path().to_path_buf();
    wait_for_log_line(&log, |l| l.starts_with("usr1 count="), WAIT).unwrap();
}

#[test]
fn cryo_python_keeps_looping() {
    counts_on_after(Workload::python().unwrap(), 5, |dir| {
        restore_detached(dir, &[])
    });
}

#[test]
fn dump_restore_dump_restore_keeps_counting() {
    let mut w = Workload::counter(8).unwrap();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();

    dump_and_clear(&mut w, first.path());
    let root = restore_detached(first.path(), &[]);
    let guard = TreeGuard::new(root);
    let mid = last_tick_of(w.log_path(), pid).unwrap();
    wait_tick_after(w.log_path(), pid, mid + 2, WAIT).unwrap();

    // The restored process is not our child: the dumper kills it and init reaps it.
    dump(pid, second.path());
    wait_gone(&[pid]);
    drop(guard);
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(second.path(), &[]);
    let _guard = TreeGuard::new(root);

    wait_tick_after(w.log_path(), pid, last + 3, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, 0), 1);
}

/// The `ShdPnd` (process-wide pending signals) mask of `pid`.
fn shared_pending(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn blocked_pending_signal_is_still_pending_after_restore() {
    let mut w = Workload::file_sig().unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();
    let usr2 = 1u64 << (libc::SIGUSR2 - 1);
    assert_eq!(shared_pending(pid) & usr2, 0);
    // The workload blocks SIGUSR2, so it stays queued.
    signal(pid, libc::SIGUSR2);
    assert_eq!(shared_pending(pid) & usr2, usr2);

    dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);

    wait_tick_after(w.log_path(), pid, last + 1, WAIT).unwrap();
    assert_eq!(
        shared_pending(pid) & usr2,
        usr2,
        "SIGUSR2 no longer pending"
    );
}

/// `script` running `command` through `/bin/sh` on a fresh pseudo-terminal; killed
/// (which hangs the terminal up) and reaped on drop.
struct OnPty(std::process::Child);

impl OnPty {
    fn spawn(command: &str) -> Self {
        // `script` runs `$SHELL -c`: pin the shell so that the session layout does
        // not depend on who runs the tests.
        let child = std::process::Command::new("script")
            .args(["-qfc", command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        OnPty(child)
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Fields 5 (session) and 6 (controlling tty, as the kernel encodes it) of /proc/PID/stat.
fn session_and_tty(pid: i32) -> (i32, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields[3].parse().unwrap(), fields[4].parse().unwrap())
}

/// `st_rdev` of a terminal in /proc/PID/stat's `tty_nr` encoding.
fn tty_nr_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).unwrap().rdev();
    let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A job of an interactive shell (in the shell's session, not leading one) is dumped
/// with `--shell-job`, then restored by a restorer run from another terminal's shell:
/// it joins that shell's session, with that terminal as its controlling tty and fds.
#[test]
fn shell_job_gets_the_restorers_terminal() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let images = work.path().join("img");
    // `; exit` keeps the shell from exec'ing the counter: the counter is its job.
    let counter = cryo_fixtures::workload_bin("counter");
    let mut holder = OnPty::spawn(&format!(
        "{} 8 {} 1; exit",
        counter.display(),
        log.display()
    ));
    let line = wait_for_log_line(&log, |l| l.starts_with("ready "), WAIT).unwrap();
    let pid: i32 = field(&line, "pid").unwrap().parse().unwrap();
    let _first = TreeGuard::new(pid);
    wait_tick_after(&log, pid, 1, WAIT).unwrap();
    let tty = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert!(tty.starts_with("/dev/pts"), "{tty:?}");
    let (sid, _) = session_and_tty(pid);
    assert_ne!(
        sid, pid,
        "the counter must be a shell's job, not a session leader"
    );

    dump_with(pid, &images, true);
    wait_status(&mut holder.0, WAIT);
    wait_gone(&[pid]);
    let last = last_tick_of(&log, pid).unwrap();

    // The shell stays after the detached restorer is done, as a user's would.
    let pidfile = work.path().join("pid");
    let shell = OnPty::spawn(&format!(
        "{} restore -D {} --shell-job -d --pidfile {} && exec sleep 60",
        env!("CARGO_BIN_EXE_restorer"),
        images.display(),
        pidfile.display()
    ));
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&pidfile).map_or(true, |s| s.is_empty()) {
        assert!(Instant::now() < deadline, "restore wrote no pidfile");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _guard = TreeGuard::new(pid);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());

    wait_tick_after(&log, pid, last + 2, WAIT).unwrap();
    assert_consecutive(&ticks_after(&log, pid, last), last + 1);
    let tty = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert!(tty.starts_with("/dev/pts"), "{tty:?}");
    let (sid, ctty) = session_and_tty(pid);
    let leader = session_and_tty(sid);
    assert_eq!(
        ctty,
        tty_nr_of(&tty),
        "fd 1 is not the controlling terminal"
    );
    assert_eq!(leader.1, ctty, "the session leader has another terminal");
    assert_ne!(sid, pid);
    drop(shell);
}

/// cryo's images are CRIU's format: CRIU 4.1 restores a counter cryo dumped, and it
/// counts on over its intact pattern.
#[test]
fn criu_restores_a_counter_cryo_dumped() {
    let w = Workload::counter(16).unwrap();
    let pid = w.pid();
    counts_on_after(w, 3, |dir| {
        criu41_in(dir, &["restore", "-d"]);
        pid
    });
}

/// A pipe tree dumped by cryo and restored by CRIU 4.1: the children's shared pipe
/// still holds its unread bytes.
#[test]
fn criu_restores_a_pipe_tree_cryo_dumped() {
    let mut w = Workload::pipe_tree(1000).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    let children: Vec<i32> = w.tree_pids().into_iter().filter(|&p| p != pid).collect();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();

    dump_and_clear(&mut w, images.path());
    criu41_in(images.path(), &["restore", "-d"]);
    let _guard = TreeGuard::new(pid);

    assert_pipe_tree_lives(w.log_path(), pid, &children);
}

/// The other way: cryo's restorer brings back a 4-thread counter CRIU 4.1 dumped live
/// on this kernel, with its thread ids, and it counts on.
#[test]
fn cryo_restores_threads_criu_dumped() {
    let mut w = Workload::threads(8, 4).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let tids = cryo_fixtures::thread_ids(pid);

    criu_dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);

    assert_eq!(root, pid);
    assert_eq!(cryo_fixtures::thread_ids(root), tids);
    wait_tick_after(w.log_path(), pid, last + 3, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, last), last + 1);
}

/// What /proc tells of `pid`'s descriptors on anonymous inodes (eventfd, timerfd,
/// signalfd, epoll) that a restore must keep, by fd: the kind, the flags, the file's
/// state and, for epoll, each registration's fd, events and data. Left out: what
/// moves on by itself (the timer's value, its ticks) and what the kernel picks (ids,
/// inode numbers, the order of registrations).
fn anon_fd_states(pid: i32) -> Vec<(i32, Vec<String>)> {
    let keep = [
        "flags:",
        "eventfd-count:",
        "eventfd-semaphore:",
        "clockid:",
        "settime flags:",
        "it_interval:",
        "sigmask:",
    ];
    let words = |l: &str, n: usize| l.split_whitespace().take(n).collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let link = std::fs::read_link(entry.path()).unwrap();
        let Some(kind) = link.to_str().and_then(|l| l.strip_prefix("anon_inode:")) else {
            continue;
        };
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let mut state: Vec<String> = info
            .lines()
            .filter_map(|l| match l.starts_with("tfd:") {
                // tfd: N events: E data: D
                true => Some(words(l, 6)),
                false => keep.iter().any(|k| l.starts_with(k)).then(|| words(l, 9)),
            })
            .collect();
        state.sort();
        state.insert(0, kind.to_string());
        out.push((fd, state));
    }
    out.sort();
    out
}

/// An event loop CRIU 4.1 dumped — epoll over a periodic timerfd, a signalfd and an
/// eventfd — comes back under cryo's restorer with each file's flags and state and
/// every registration: the timer ticks on through epoll, and SIGUSR1 reaches the
/// signalfd, finds the eventfd's count and all three fds registered.
#[test]
fn cryo_restores_an_event_loop_criu_dumped() {
    event_loop_round_trip(criu_dump_and_clear, |dir| restore_detached(dir, &[]));
}

/// The event loop dumped by cryo comes back under cryo's restorer, and under CRIU 4.1's.
#[test]
fn an_event_loop_cryo_dumped_comes_back_under_cryo_and_under_criu() {
    event_loop_round_trip(dump_and_clear, |dir| restore_detached(dir, &[]));
    event_loop_round_trip(dump_and_clear, |dir| {
        criu41_in(dir, &["restore", "-d"]);
        let set = cryo_format::ImageSet::open(dir).unwrap();
        set.pstree().unwrap()[0].pid as i32
    });
}

/// Dumps the evloop workload with `dump`, restores it with `restore`, and checks that
/// its eventfd, timerfd, signalfd and epoll fds are as they were (fdinfo), that the
/// timer ticks on, and that SIGUSR1 still reaches it through the signalfd and finds the
/// eventfd count and the three epoll registrations.
fn event_loop_round_trip(
    dump: impl FnOnce(&mut Workload, &Path),
    restore: impl FnOnce(&Path) -> i32,
) {
    let mut w = Workload::evloop().unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 2, WAIT).unwrap();
    let before = anon_fd_states(pid);
    assert_eq!(before.len(), 4, "{before:?}");

    dump(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore(images.path());
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);

    assert_eq!(anon_fd_states(pid), before);
    wait_tick_after(w.log_path(), pid, last + 3, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, last), last + 1);
    signal(pid, libc::SIGUSR1);
    let line = wait_for_log_line(w.log_path(), |l| l.starts_with("usr1 "), WAIT).unwrap();
    assert_eq!(line, format!("usr1 efd={EVLOOP_EFD_COUNT} epoll=3"));
}

/// Points the first registration of the (only) epoll instance in `dir` at fd `target`;
/// returns the epoll fd's number.
fn retarget_epoll_watch(dir: &Path, target: u32) -> u32 {
    use cryo_format::schema::FdTypes;
    let set = cryo_format::ImageSet::open(dir).unwrap();
    let mut files = set.files().unwrap();
    let epoll = files.iter_mut().find_map(|f| f.epfd.as_mut()).unwrap();
    epoll.tfd[0].tfd = target;
    let epoll_id = epoll.id;
    let magic = cryo_format::magic::well_known::files();
    let mut w = cryo_format::ImageWriter::create(dir.join("files.img"), magic).unwrap();
    for f in &files {
        w.write(f).unwrap();
    }
    w.finish().unwrap();

    let pid = set.pstree().unwrap()[0].pid;
    let fdinfo = set.fdinfo(set.ids(pid).unwrap().files_id).unwrap();
    let epfd = fdinfo
        .iter()
        .find(|f| f.id == epoll_id && f.r#type == FdTypes::Eventpoll as i32)
        .unwrap();
    epfd.fd
}

/// Bad epoll registrations fail the restore and leave nothing running: one watching an
/// fd the process does not have is refused before anything starts, naming the task
/// and both fds; one the kernel refuses (a regular file) fails inside the new process,
/// which the restorer then kills, and the error names the pid and the fd.
#[test]
fn bad_epoll_registrations_fail_the_restore_and_leave_nothing_running() {
    let mut w = Workload::evloop().unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();
    criu_dump_and_clear(&mut w, images.path());
    let log_fd = 3;

    for target in [42, log_fd] {
        let bad = tempfile::tempdir().unwrap();
        copy_images(images.path(), bad.path());
        let epfd = retarget_epoll_watch(bad.path(), target);
        let err = restore_fails(bad.path(), &[]);
        let expected = match target {
            42 => format!(
                "task {pid}: epoll fd {epfd} watches fd 42, which the task does not have open"
            ),
            _ => format!(
                "creating pid {pid}: epoll registration of fd {log_fd} (in epoll fd {epfd}) \
                 failed: EPERM"
            ),
        };
        assert!(err.contains(&expected), "{err}");
        assert_eq!(taken(&[pid]), None, "a process of the restore is left");
    }
}

/// Children that have exited but are not reaped yet come back as zombies, and their
/// parent's `waitpid` then collects the dumped statuses: an exit code, and death by a
/// signal.
#[test]
fn zombies_come_back_and_their_parent_reaps_the_dumped_statuses() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let script = "import os,signal,sys,time\n\
        log=sys.argv[1]\n\
        a=os.fork()\n\
        if a==0: os._exit(7)\n\
        b=os.fork()\n\
        if b==0:\n    os.kill(os.getpid(),signal.SIGTERM); time.sleep(5); os._exit(0)\n\
        def go(*_):\n    got=[f'{p}:{os.waitpid(p,0)[1]}' for p in (a,b)]\n    \
        open(log,'a').write('reaped '+' '.join(got)+'\\n')\n\
        signal.signal(signal.SIGUSR1,go)\n\
        open(log,'a').write(f'ready a={a} b={b}\\n')\n\
        while True: time.sleep(0.05)";
    let log_arg = log.to_str().unwrap();
    let mut child = Silent::spawn("/usr/bin/python3", &["-c", script, log_arg]);
    let pid = child.pid();
    let _first = TreeGuard::new(pid);
    let line = wait_for_log_line(&log, |l| l.starts_with("ready "), WAIT).unwrap();
    let kids: Vec<i32> = ["a", "b"]
        .iter()
        .map(|k| field(&line, k).unwrap().parse().unwrap())
        .collect();
    let is_zombie = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z "))
    };
    let deadline = Instant::now() + WAIT;
    while !kids.iter().all(|&k| is_zombie(k)) {
        assert!(Instant::now() < deadline, "children did not become zombies");
        std::thread::sleep(Duration::from_millis(20));
    }

    let images = work.path().join("img");
    dump(pid, &images);
    child.reap();
    wait_gone(&[pid, kids[0], kids[1]]);
    let root = restore_detached(&images, &[]);
    let _guard = TreeGuard::new(root);
    assert_eq!(root, pid);
    for &k in &kids {
        assert!(is_zombie(k), "{k} is not a zombie after the restore");
        assert_eq!(proc_status_field(k, "PPid"), Some(pid as u64));
    }

    signal(pid, libc::SIGUSR1);
    let line = wait_for_log_line(&log, |l| l.starts_with("reaped "), WAIT).unwrap();
    assert_eq!(
        line,
        format!(
            "reaped {}:{} {}:{}",
            kids[0],
            7 << 8,
            kids[1],
            libc::SIGTERM
        )
    );
}

/// What a CRIU user tries first: a bash loop whose `sleep` child comes and goes. Dumped
/// and restored three times in a row, straight after each dump (the killed `sleep` is
/// init's to reap by then: the restorer waits for it), it counts on without a gap.
#[test]
fn a_bash_loop_survives_repeated_dumps_and_restores() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let script = format!(
        "i=0; while :; do echo $((i++)) >> {}; sleep 0.1; done",
        out.display()
    );
    let mut child = Silent::spawn("/bin/bash", &["-c", &script]);
    let pid = child.pid();
    let _guard = TreeGuard::new(pid);
    let numbers = || -> Vec<u64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let wait_for_count = |n: usize| {
        let deadline = Instant::now() + WAIT;
        while numbers().len() < n {
            assert!(
                Instant::now() < deadline,
                "the loop stopped at {:?}",
                numbers().last()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_count(3);
    for round in 0..3 {
        let images = work.path().join(format!("img{round}"));
        dump(pid, &images);
        if round == 0 {
            child.reap();
        }
        let before = numbers().len();
        assert_eq!(restore_detached(&images, &[]), pid);
        wait_for_count(before + 3);
    }
    let all = numbers();
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, expected, "numbers skipped or repeated");
}

/// A process dumped in a job-control stop comes back stopped; SIGCONT resumes its count
/// where it stopped.
#[test]
fn a_stopped_process_comes_back_stopped() {
    let mut w = Workload::counter(4).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();
    signal(pid, libc::SIGSTOP);
    assert!(cryo_fixtures::wait_state(pid, 'T', WAIT));

    dump_and_clear(&mut w, images.path());
    let last = last_tick_of(w.log_path(), pid).unwrap();
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);
    assert!(
        cryo_fixtures::wait_state(pid, 'T', WAIT),
        "not stopped after the restore"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        last_tick_of(w.log_path(), pid),
        Some(last),
        "it ran while stopped"
    );

    signal(pid, libc::SIGCONT);
    wait_tick_after(w.log_path(), pid, last + 2, WAIT).unwrap();
    assert_consecutive(&ticks_after(w.log_path(), pid, last), last + 1);
}

/// CRaC's flow end to end: a shell checkpoints itself (`dumper dump -t $$`, default
/// kill), and is restored. The command the shell ran then returns 0 after the restore,
/// and the shell carries on with what follows it.
#[test]
fn a_self_checkpoint_returns_after_the_restore() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    let log = work.path().join("log");
    let script = format!(
        "echo before >> {log}; {} dump -t $$ -D {} 2>>{log}; echo rc=$? >> {log}",
        workspace_bin("cryo-dumper", "dumper").display(),
        img.display(),
        log = log.display()
    );
    let mut shell = Silent::spawn("/bin/sh", &["-c", &script]);
    let pid = shell.pid();
    let _first = TreeGuard::new(pid);
    let deadline = Instant::now() + WAIT;
    while !img.join("inventory.img").exists() {
        assert!(Instant::now() < deadline, "no complete dump");
        std::thread::sleep(Duration::from_millis(20));
    }
    shell.reap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("rc="),
        "the command returned before the restore: {text}"
    );

    let set = cryo_format::ImageSet::open(&img).unwrap();
    let pids: Vec<i32> = set.pstree().unwrap().iter().map(|e| e.pid as i32).collect();
    wait_gone(&pids);
    assert_eq!(restore_detached(&img, &[]), pid);
    let _guard = TreeGuard::new(pid);
    let rc = wait_for_log_line(&log, |l| l.starts_with("rc="), WAIT).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(rc, "rc=0", "{text}");
    assert!(text.contains("restored from the checkpoint"), "{text}");
}

/// Nice value of thread `tid` (field 19 of its stat).
fn nice_of(pid: i32, tid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[16].parse().unwrap()
}

/// Per-thread nice values and the process's oom_score_adj come back as dumped.
#[test]
fn nice_values_and_oom_score_adj_come_back() {
    let mut w = Workload::threads(4, 2).unwrap();
    let images = tempfile::tempdir().unwrap();
    let pid = w.pid();
    wait_tick_after(w.log_path(), pid, 1, WAIT).unwrap();
    let tids = cryo_fixtures::thread_ids(pid);
    let niced: Vec<(i32, i32)> = tids.iter().zip([3, 9, 5]).map(|(&t, n)| (t, n)).collect();
    for &(tid, nice) in &niced {
        // SAFETY: setpriority takes no pointers.
        let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as u32, nice) };
        assert_eq!(ret, 0);
        assert_eq!(nice_of(pid, tid), nice);
    }
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), "321").unwrap();

    dump_and_clear(&mut w, images.path());
    let root = restore_detached(images.path(), &[]);
    let _guard = TreeGuard::new(root);
    for &(tid, nice) in &niced {
        assert_eq!(nice_of(pid, tid), nice, "thread {tid}");
    }
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "321");
}
