//! End-to-end dumps of the fixture workloads, checked against the live processes, the
//! format crate's readers and Debian's `crit`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cryo_dumper::dump;
use cryo_fixtures::{Workload, pattern_word, pipe_byte, thread_ids};
use cryo_format::schema::{FdTypes, FileEntry};
use cryo_format::{ImageSet, MemoryView};

mod common;
use common::*;

#[test]
fn counter_dump_holds_the_pattern_and_the_live_vmas_and_kills_the_tree() {
    let mut w = Workload::counter(8).unwrap();
    let pid = w.pid();
    let region = region_start(&w);
    let dir = tempfile::tempdir().unwrap();
    let before = maps(pid);

    let summary = dump(&opts(pid, dir.path(), false)).unwrap();
    assert_eq!((summary.processes, summary.threads), (1, 1));
    // The dumper, as tracer, collects the exit; the workload's own reap may find nothing.
    let _ = w.wait_exit(Duration::from_millis(200));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "a dump without --leave-running kills"
    );

    let set = ImageSet::open(dir.path()).unwrap();
    let tree = set.pstree().unwrap();
    assert_eq!(tree.len(), 1);
    assert_eq!(
        (tree[0].pid, tree[0].threads.clone()),
        (pid as u32, vec![pid as u32])
    );

    let mm = set.mm(pid as u32).unwrap();
    let image_vmas: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    assert_eq!(image_vmas, vma_ranges(&before));

    let mem = MemoryView::open_pid(dir.path(), pid as u32).unwrap();
    for i in [0u64, 1, 4095, 512 * 1024, (8 << 20) / 8 - 1] {
        assert_eq!(
            mem.read_u64(region + i * 8).unwrap(),
            pattern_word(i),
            "word {i}"
        );
    }
    crit_decodes_every_image(dir.path());
}

#[test]
fn leave_running_keeps_counting_with_the_same_maps_and_fds() {
    let w = Workload::counter(4).unwrap();
    let pid = w.pid();
    let (maps_before, fds_before) = (maps(pid), fd_list(pid));
    let dir = tempfile::tempdir().unwrap();

    dump(&opts(pid, dir.path(), true)).unwrap();

    let tick = w.last_tick(pid).unwrap_or(0);
    w.wait_tick_after(pid, tick + 2, Duration::from_secs(5))
        .unwrap();
    assert_eq!(maps(pid), maps_before);
    assert_eq!(fd_list(pid), fds_before);
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    assert!(!w.log().contains("bad=1"), "pattern unchanged after resume");
    assert!(dir.path().join("inventory.img").exists());
}

#[test]
fn threads_get_one_core_each_and_keep_counting() {
    let w = Workload::threads(2, 4).unwrap();
    let pid = w.pid();
    let tids = thread_ids(pid);
    let (maps_before, fds_before) = (maps(pid), fd_list(pid));
    let dir = tempfile::tempdir().unwrap();

    let summary = dump(&opts(pid, dir.path(), true)).unwrap();
    assert_eq!(summary.threads, 5);
    assert_eq!((maps(pid), fd_list(pid)), (maps_before, fds_before));
    assert_eq!(thread_ids(pid), tids);

    let set = ImageSet::open(dir.path()).unwrap();
    let root = set.root().unwrap();
    let mut image_tids: Vec<i32> = root.threads.iter().map(|&t| t as i32).collect();
    assert_eq!(image_tids[0], pid, "leader first");
    image_tids.sort_unstable();
    assert_eq!(image_tids, tids);
    for &tid in &tids {
        let core = set.core(tid as u32).unwrap();
        assert_eq!(
            core.tc.is_some(),
            tid == pid,
            "task core only in the leader"
        );
        let regs = &core.thread_info.as_ref().unwrap().gpregs;
        assert_eq!((regs.cs, regs.ss), (0x33, 0x2b));
        let mm = set.mm(pid as u32).unwrap();
        assert!(
            mm.vmas
                .iter()
                .any(|v| v.start <= regs.sp && regs.sp < v.end),
            "sp of {tid} in a VMA"
        );
        assert!(
            core.thread_core.unwrap().rseq_entry.is_some(),
            "glibc registers rseq"
        );
    }

    let line = w
        .wait_for_line(|l| l.contains(" t3="), Duration::from_secs(5))
        .unwrap();
    let t3: u64 = cryo_fixtures::field(&line, "t3").unwrap().parse().unwrap();
    w.wait_for_line(
        |l| {
            cryo_fixtures::field(l, "t3")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v > t3 + 5)
        },
        Duration::from_secs(5),
    )
    .unwrap();
    crit_decodes_every_image(dir.path());
}

#[test]
fn registers_of_a_blocked_reader_are_captured_with_restart_semantics() {
    // `cat` blocked in read(2) on an empty pipe has stable registers: read them with our
    // own seize, let it go, then dump and compare.
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cat.id() as i32;
    std::thread::sleep(Duration::from_millis(200));

    use cryo_dumper::ptrace;
    ptrace::seize(pid).unwrap();
    ptrace::interrupt(pid).unwrap();
    ptrace::wait_interrupt_stop(pid).unwrap();
    let live = ptrace::get_regs(pid).unwrap();
    ptrace::detach(pid).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();
    let set = ImageSet::open(dir.path()).unwrap();
    let regs = set.core(pid as u32).unwrap().thread_info.unwrap().gpregs;

    assert_eq!(live.orig_rax, libc::SYS_read as u64);
    assert_eq!(
        -(live.rax as i64),
        512,
        "read interrupted with -ERESTARTSYS"
    );
    assert_eq!(regs.orig_ax, live.orig_rax);
    assert_eq!(regs.ax, live.orig_rax, "the image re-executes read");
    assert_eq!(regs.ip, live.rip - 2);
    assert_eq!(
        (regs.sp, regs.di, regs.si, regs.dx),
        (live.rsp, live.rdi, live.rsi, live.rdx)
    );
    assert_eq!(regs.fs_base, live.fs_base);

    // Still reading after the dump: it echoes nothing but must be alive and untraced.
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    let _ = cat.kill();
    let _ = cat.wait();
}

#[test]
fn pipe_tree_dump_holds_the_unread_bytes_and_all_three_processes() {
    let w = Workload::pipe_tree(5000).unwrap();
    let pids = w.tree_pids();
    // A process's first log line allocates its heap; let every process get that far.
    for &p in &pids {
        w.wait_tick_after(p, 1, Duration::from_secs(5)).unwrap();
    }
    let before: Vec<_> = pids.iter().map(|&p| (maps(p), fd_list(p))).collect();
    let dir = tempfile::tempdir().unwrap();

    let summary = dump(&opts(w.pid(), dir.path(), true)).unwrap();
    assert_eq!(summary.processes, 3);
    let after: Vec<_> = pids.iter().map(|&p| (maps(p), fd_list(p))).collect();
    for (pid, ((m0, f0), (m1, f1))) in pids.iter().zip(before.iter().zip(&after)) {
        let gone: Vec<&str> = m0.lines().filter(|l| !m1.contains(l)).collect();
        let new: Vec<&str> = m1.lines().filter(|l| !m0.contains(l)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "maps of {pid}: -{gone:?} +{new:?}"
        );
        assert_eq!(f0, f1, "fds of {pid}");
    }

    let set = ImageSet::open(dir.path()).unwrap();
    let tree = set.pstree().unwrap();
    let image_pids: BTreeSet<i32> = tree.iter().map(|t| t.pid as i32).collect();
    assert_eq!(image_pids, pids.iter().copied().collect());
    assert!(tree.iter().skip(1).all(|t| t.ppid == w.pid() as u32));

    let data = set.pipes_data().unwrap();
    let with_bytes: Vec<_> = data.iter().filter(|(e, _)| e.bytes > 0).collect();
    assert_eq!(with_bytes.len(), 1);
    let expected: Vec<u8> = (0..5000).map(pipe_byte).collect();
    assert_eq!(with_bytes[0].1, expected);

    // The pipe in every process's fd table is one object with one id.
    let files = set.files().unwrap();
    let pipe_ids: BTreeSet<u32> = files
        .iter()
        .filter(|f: &&FileEntry| f.r#type == FdTypes::Pipe as i32)
        .filter(|f| f.pipe.as_ref().unwrap().pipe_id == with_bytes[0].0.pipe_id)
        .map(|f| f.id)
        .collect();
    assert_eq!(
        pipe_ids.len(),
        2,
        "one read end and one write end description"
    );

    // The bytes were copied, not consumed: the live parent still drains all of them.
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(w.pid(), libc::SIGUSR1) };
    let line = w
        .wait_for_line(|l| l.starts_with("pipe "), Duration::from_secs(5))
        .unwrap();
    assert_eq!(line, "pipe bytes=5000 ok=1");
    crit_decodes_every_image(dir.path());
}

#[test]
fn file_sig_dump_has_offsets_handlers_mask_and_itimer() {
    let w = Workload::file_sig().unwrap();
    let pid = w.pid();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();

    let set = ImageSet::open(dir.path()).unwrap();
    let files = set.files().unwrap();
    let reg = |suffix: &str| {
        files
            .iter()
            .filter_map(|f| f.reg.as_ref())
            .find(|r| r.name.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in files.img"))
            .clone()
    };
    assert_eq!(reg("/data-rw").pos, cryo_fixtures::FILE_SIG_RW_POS);
    assert_eq!(
        reg("/data-rw").flags & libc::O_ACCMODE as u32,
        libc::O_RDWR as u32
    );
    assert_eq!(reg("/data-ro").pos, cryo_fixtures::FILE_SIG_RO_POS);
    assert_eq!(
        reg("/data-ro").size,
        Some(cryo_fixtures::FILE_SIG_RO_LEN as u64)
    );
    // The log is open for appending: like CRIU, no size (CRIU's restore would refuse the
    // grown log otherwise).
    let log_name = w
        .log_path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let log = reg(&format!("/{log_name}"));
    assert_ne!(log.flags & libc::O_APPEND as u32, 0);
    assert_eq!(log.size, None);

    let tc = set.core(pid as u32).unwrap().tc.unwrap();
    // sigactions lists signals 1..=64 without SIGKILL (9) and SIGSTOP (19), as CRIU does.
    let index = |sig: i32| (sig - 1 - i32::from(sig > 9) - i32::from(sig > 19)) as usize;
    assert_eq!(tc.sigactions.len(), 62);
    let usr1 = &tc.sigactions[index(libc::SIGUSR1)];
    assert_eq!(
        tc.sigactions[index(libc::SIGUSR2)].sigaction,
        0,
        "SIGUSR2 has no handler"
    );
    assert_ne!(usr1.sigaction, 0, "SIGUSR1 has a handler");
    assert_ne!(usr1.flags & libc::SA_RESTART as u64, 0);
    assert_ne!(usr1.mask & (1 << (libc::SIGTERM - 1)), 0);
    assert_eq!(tc.blk_sigset, 1 << (libc::SIGUSR2 - 1));
    let real = tc.timers.clone().unwrap().real;
    assert_eq!((real.isec, real.iusec), (0, 20_000));
    assert!(real.vsec == 0 && real.vusec <= 20_000);

    // The handlers still work after the dump.
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    w.wait_for_line(|l| l == "usr1 count=1", Duration::from_secs(5))
        .unwrap();
    crit_decodes_every_image(dir.path());
}

#[test]
fn python_dump_is_readable_by_crit() {
    let w = Workload::python().unwrap();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(w.pid(), dir.path(), true)).unwrap();
    let set = ImageSet::open(dir.path()).unwrap();
    let mm = set.mm(w.pid() as u32).unwrap();
    assert!(
        mm.vmas.iter().filter(|v| v.shmid != 0).count() > 5,
        "shared libraries mapped"
    );
    let tick = w.last_tick(w.pid()).unwrap_or(0);
    w.wait_tick_after(w.pid(), tick + 1, Duration::from_secs(5))
        .unwrap();
    crit_decodes_every_image(dir.path());
}

#[test]
fn a_shell_checkpoints_itself_through_the_double_fork() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let log = dir.path().join("shell.log");
    let script = format!(
        "{} dump -t $$ -D {} --leave-running >{}/dumper.out 2>&1; echo rc=$? >> {log}; i=0; \
         while :; do i=$((i+1)); echo tick=$i >> {log}; sleep 0.1; done",
        env!("CARGO_BIN_EXE_dumper"),
        img.display(),
        dir.path().display(),
        log = log.display()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let shell = child.id() as i32;
    let _guard = cryo_fixtures::TreeGuard::new(shell);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !img.join("inventory.img").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no complete dump; dumper said: {}",
            std::fs::read_to_string(dir.path().join("dumper.out")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let set = ImageSet::open(&img).unwrap();
    assert_eq!(set.root().unwrap().pid, shell as u32);
    let comm = |pid: u32| set.core(pid).unwrap().tc.unwrap().comm;
    assert_eq!(comm(shell as u32), "sh");
    // The invoking dumper waits in the tree for the outcome (and is dumped with it);
    // the worker that froze the tree is not in it.
    let pstree = set.pstree().unwrap();
    assert_eq!(pstree.len(), 2, "{pstree:?}");
    assert_eq!(pstree[1].ppid, shell as u32);
    assert_eq!(comm(pstree[1].pid), "dumper");

    // The command returned only once the dump was done, with its outcome.
    let rc =
        cryo_fixtures::wait_for_log_line(&log, |l| l.starts_with("rc="), Duration::from_secs(10))
            .unwrap();
    assert_eq!(
        rc,
        "rc=0",
        "{}",
        std::fs::read_to_string(dir.path().join("dumper.out")).unwrap_or_default()
    );
    cryo_fixtures::wait_for_log_line(&log, |l| l == "tick=5", Duration::from_secs(10)).unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn pages_stream_to_a_page_server_and_export_back_to_the_pattern() {
    use cryo_pageserver::export::{ExportOptions, export_checkpoint};
    use cryo_pageserver::server::{self, ParentPolicy, ServerConfig, SessionEnd};

    let store_dir = tempfile::tempdir().unwrap();
    let store = cryo_pageserver::store::Store::open(store_dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(server::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let config = std::sync::Arc::new(ServerConfig {
        store: store.clone(),
        parent_policy: ParentPolicy::None,
        serve_checkpoint: None,
        idle_timeout: server::DEFAULT_IDLE_TIMEOUT,
    });
    let session = rt.spawn(server::serve(listener, config, true));

    let w = Workload::counter(8).unwrap();
    let pid = w.pid();
    let region = region_start(&w);
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(pid, dir.path(), true);
    o.page_server = Some(addr);
    dump(&o).unwrap();
    assert!(dir.path().join("inventory.img").exists());
    assert!(
        !dir.path().join(format!("pagemap-{pid}.img")).exists(),
        "pages went to the server"
    );

    let end = rt.block_on(session).unwrap().unwrap();
    let Some(Ok(SessionEnd::Committed(info))) = end else {
        panic!("session ended with {end:?}")
    };
    // The directory names its checkpoint (the restorer reads it back).
    let record = cryo_pageserver::record::CheckpointRecord::read(dir.path())
        .unwrap()
        .expect("a page-server checkpoint record");
    assert_eq!((record.checkpoint, record.peer), (info.id, addr));
    export_checkpoint(&store, info.id, dir.path(), &ExportOptions::default()).unwrap();
    let mem = MemoryView::open_pid(dir.path(), pid as u32).unwrap();
    for i in [0u64, 77, (8 << 20) / 8 - 1] {
        assert_eq!(
            mem.read_u64(region + i * 8).unwrap(),
            pattern_word(i),
            "word {i}"
        );
    }
}

#[test]
fn a_criu_page_server_gets_the_pages_and_the_dir_records_no_checkpoint() {
    let (addr, server) = criu_like_server(None);
    let w = Workload::counter(4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(w.pid(), dir.path(), true);
    o.page_server = Some(addr);
    dump(&o).unwrap();
    assert!(dir.path().join("inventory.img").exists());
    assert!(
        server.join().unwrap() >= (4 << 20) / 4096,
        "the pages went to the server"
    );
    assert_eq!(
        cryo_pageserver::record::CheckpointRecord::read(dir.path()).unwrap(),
        None
    );
}

#[test]
fn a_shell_job_on_a_pty_dumps_its_terminal_only_with_shell_job() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into locals; the name/termios/winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: openpty returned two new fds that we own from here on.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let mut cmd = Command::new("sleep");
    cmd.arg("60")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            // Only the terminal: no fd of the test harness or the pty master.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(100));

    let dir = tempfile::tempdir().unwrap();
    let err = dump(&opts(pid, dir.path(), true)).unwrap_err();
    assert!(err.to_string().contains("terminal"), "{err}");
    assert!(!dir.path().join("inventory.img").exists());

    let mut o = opts(pid, dir.path(), true);
    o.shell_job = true;
    dump(&o).unwrap();
    let set = ImageSet::open(dir.path()).unwrap();
    let files = set.files().unwrap();
    let tty: Vec<_> = files.iter().filter_map(|f| f.tty.as_ref()).collect();
    assert_eq!(tty.len(), 1, "fds 0-2 share one description: {files:?}");
    let regf = files.iter().find(|f| Some(f.id) == tty[0].regf_id).unwrap();
    assert!(regf.reg.as_ref().unwrap().name.starts_with("/dev/pts/"));
    let fds = set.fdinfo(set.ids(pid as u32).unwrap().files_id).unwrap();
    assert_eq!(
        fds.iter()
            .filter(|f| f.r#type == FdTypes::Tty as i32)
            .count(),
        3
    );
    crit_decodes_every_image(dir.path());

    let _ = child.kill();
    let _ = child.wait();
    drop(master);
}

#[test]
fn a_multithreaded_tree_is_killed_after_its_dump() {
    let mut w = Workload::threads(2, 4).unwrap();
    let pid = w.pid();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), false)).unwrap();
    let _ = w.wait_exit(Duration::from_millis(200));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(dir.path().join("inventory.img").exists());
}

#[test]
fn a_blocked_pending_signal_is_in_the_image_and_stays_pending() {
    let w = Workload::file_sig().unwrap();
    let pid = w.pid();
    // SIGUSR2 is blocked by the workload: it stays queued in the process.
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    std::thread::sleep(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();

    let set = ImageSet::open(dir.path()).unwrap();
    let shared = set
        .core(pid as u32)
        .unwrap()
        .tc
        .unwrap()
        .signals_s
        .unwrap()
        .signals;
    // A SIGALRM of the 20 ms itimer may be queued too while the tree is frozen.
    let signos: Vec<i32> = shared
        .iter()
        .map(|s| i32::from_ne_bytes(s.siginfo[0..4].try_into().unwrap()))
        .collect();
    assert_eq!(
        signos.iter().filter(|&&s| s == libc::SIGUSR2).count(),
        1,
        "{signos:?}"
    );
    assert!(
        signos
            .iter()
            .all(|&s| s == libc::SIGUSR2 || s == libc::SIGALRM),
        "{signos:?}"
    );
    assert!(shared.iter().all(|s| s.siginfo.len() == 128));

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let shdpnd = status.lines().find(|l| l.starts_with("ShdPnd:")).unwrap();
    let mask = u64::from_str_radix(shdpnd.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(
        mask & (1 << (libc::SIGUSR2 - 1)),
        0,
        "still pending after the dump"
    );
}

#[test]
fn a_posix_timer_is_dumped_with_its_signal_and_interval() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ptimer.c");
    std::fs::write(
        &src,
        "#include <signal.h>\n#include <stdio.h>\n#include <time.h>\n#include <unistd.h>\n\
         int main(void) { timer_t t; struct sigevent ev = {0};\n\
         ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGRTMIN;\n\
         ev.sigev_value.sival_ptr = (void *)0x1234; signal(SIGRTMIN, SIG_IGN);\n\
         timer_create(CLOCK_MONOTONIC, &ev, &t);\n\
         struct itimerspec its = {{0, 50000000}, {0, 50000000}}; timer_settime(t, 0, &its, 0);\n\
         puts(\"ready\"); fflush(stdout); for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.path().join("ptimer");
    let gcc = Command::new("gcc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(gcc.success());
    let child = ReadyChild::spawn(&mut Command::new(&bin));
    let pid = child.pid();

    let img = dir.path().join("img");
    let result = dump(&opts(pid, &img, true));
    drop(child);
    result.unwrap();

    let set = ImageSet::open(&img).unwrap();
    let posix = set
        .core(pid as u32)
        .unwrap()
        .tc
        .unwrap()
        .timers
        .unwrap()
        .posix;
    assert_eq!(posix.len(), 1);
    let t = &posix[0];
    assert_eq!(
        (t.clock_id, t.si_signo, t.sival_ptr),
        (1, libc::SIGRTMIN() as u32, 0x1234)
    );
    assert_eq!(t.it_sigev_notify, libc::SIGEV_SIGNAL as u32);
    assert_eq!((t.isec, t.insec), (0, 50_000_000));
    assert!(t.vsec == 0 && t.vnsec <= 50_000_000);
}

/// A child that has exited but is not reaped yet is part of the tree: dumped as CRIU
/// dumps it, a pstree entry and a core holding only its name and wait status.
#[test]
fn a_zombie_child_is_dumped_with_its_exit_status() {
    // `exit 7` runs in a subshell that is never reaped by the `sleep 60` that replaced sh.
    let mut parent = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("(exit 7) & exec sleep 60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = parent.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let zombie = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            let c: i32 = c.parse().unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap();
            if stat.contains(") Z ") {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no zombie child appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();

    let set = ImageSet::open(dir.path()).unwrap();
    let pstree = set.pstree().unwrap();
    let entry = pstree.iter().find(|e| e.pid == zombie as u32).unwrap();
    assert_eq!(
        (entry.ppid, entry.threads.clone()),
        (pid as u32, vec![zombie as u32])
    );
    let core = set.core(zombie as u32).unwrap();
    let tc = core.tc.unwrap();
    assert_eq!((tc.task_state, tc.exit_code), (2, 7 << 8));
    assert!(core.thread_info.is_none());
    assert!(!dir.path().join(format!("mm-{zombie}.img")).exists());
    crit_decodes_every_image(dir.path());

    // Left running: the parent still has its unreaped child.
    assert!(parent.try_wait().unwrap().is_none(), "parent still running");
    let stat = std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap();
    assert!(stat.contains(") Z "), "{stat}");
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    let _ = parent.kill();
    let _ = parent.wait();
}

/// A process stopped by job control (SIGSTOP) is dumped as CRIU dumps it (task state
/// "stopped", its stop signal) and stays stopped after a `--leave-running` dump; SIGCONT
/// then wakes it as before.
#[test]
fn a_stopped_process_is_dumped_stopped_and_stays_stopped() {
    let w = Workload::counter(4).unwrap();
    let pid = w.pid();
    w.wait_tick_after(pid, 1, Duration::from_secs(10)).unwrap();
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    assert!(cryo_fixtures::wait_state(pid, 'T', Duration::from_secs(5)));
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();

    let tc = ImageSet::open(dir.path())
        .unwrap()
        .core(pid as u32)
        .unwrap()
        .tc
        .unwrap();
    assert_eq!(
        (tc.task_state, tc.stop_signo),
        (3, Some(libc::SIGSTOP as u32))
    );
    assert_eq!(cryo_fixtures::proc_state(pid), Some('T'));
    assert_eq!(tracer_of(pid), "TracerPid:\t0");
    let last = w.last_tick(pid).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.last_tick(pid), Some(last), "it ran while stopped");
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    w.wait_tick_after(pid, last, Duration::from_secs(10))
        .unwrap();
}

/// An event loop's eventfd, timerfd, signalfd and epoll fds are dumped with what the
/// kernel holds for them (as CRIU writes them), and the loop goes on undisturbed.
#[test]
fn event_loop_fds_are_dumped_with_their_state() {
    let w = Workload::evloop().unwrap();
    let pid = w.pid();
    w.wait_tick_after(pid, 1, Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    dump(&opts(pid, dir.path(), true)).unwrap();

    let set = ImageSet::open(dir.path()).unwrap();
    let files = set.files().unwrap();
    let one = |kind: FdTypes| {
        let found: Vec<&FileEntry> = files.iter().filter(|f| f.r#type == kind as i32).collect();
        assert_eq!(found.len(), 1, "{kind:?}");
        found[0].clone()
    };
    let efd = one(FdTypes::Eventfd).efd.unwrap();
    assert_eq!(efd.counter, cryo_fixtures::EVLOOP_EFD_COUNT);
    assert_eq!(efd.flags, (libc::O_RDWR | libc::O_NONBLOCK) as u32);
    let tfd = one(FdTypes::Timerfd).tfd.unwrap();
    assert_eq!(
        (tfd.clockid, tfd.isec, tfd.insec),
        (libc::CLOCK_MONOTONIC as u32, 0, 100_000_000)
    );
    assert!(tfd.vsec == 0 && tfd.vnsec <= 100_000_000, "{tfd:?}");
    assert_eq!(
        one(FdTypes::Signalfd).sgfd.unwrap().sigmask,
        1 << (libc::SIGUSR1 - 1)
    );
    let ep = one(FdTypes::Eventpoll).epfd.unwrap();
    // The registrations name the fds of the other three, with their events and data.
    let fd_of = |kind: FdTypes| {
        let id = one(kind).id;
        let table = set.fdinfo(set.ids(pid as u32).unwrap().files_id).unwrap();
        table.iter().find(|f| f.id == id).unwrap().fd
    };
    let mut regs: Vec<(u32, u64)> = ep.tfd.iter().map(|t| (t.tfd, t.data)).collect();
    regs.sort();
    let mut want = vec![
        (fd_of(FdTypes::Timerfd), 1),
        (fd_of(FdTypes::Signalfd), 2),
        (fd_of(FdTypes::Eventfd), 3),
    ];
    want.sort();
    assert_eq!(regs, want);
    let efd_events = ep.tfd.iter().find(|t| t.data == 3).unwrap().events;
    assert_ne!(efd_events & libc::EPOLLET as u32, 0);
    crit_decodes_every_image(dir.path());

    // Undisturbed: it ticks on, and its eventfd still holds the count.
    let last = w.last_tick(pid).unwrap();
    w.wait_tick_after(pid, last + 2, Duration::from_secs(10))
        .unwrap();
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    w.wait_for_line(|l| l == "usr1 efd=5 epoll=3", Duration::from_secs(5))
        .unwrap();
}
