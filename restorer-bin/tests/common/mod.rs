//! Helpers shared by the restorer's integration tests.
#![allow(dead_code)]

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Where CRIU's workloads ran when the fixture sets were dumped.
pub const FX: &str = "/tmp/fx";

pub fn restorer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_restorer"))
}

pub fn criu_set(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/criu-images")
        .join(name)
}

/// An exclusive lock on one fixture set's pids and files, across test processes.
pub struct SetLock(#[allow(dead_code)] File);

pub fn lock_set(name: &str) -> SetLock {
    fs::create_dir_all(FX).unwrap();
    let file = File::create(format!("{FX}/.{name}.lock")).unwrap();
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(ret, 0, "flock");
    SetLock(file)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a binary that
/// another test is running is never written in place.
fn install(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Puts the files a CRIU set had open back as they were at the dump: the workload
/// binaries, the log (`logs/NAME.log`) and the stdout file of the recorded size.
pub fn prepare_criu_files(name: &str, stdout_content: &[u8]) {
    let workloads = criu_set("workloads");
    for bin in ["mem", "pipe3"] {
        install(
            &Path::new(FX).join(bin),
            &fs::read(workloads.join(bin)).unwrap(),
            0o755,
        );
    }
    let log = workloads.join(format!("logs/{name}.log"));
    if log.exists() {
        fs::copy(&log, format!("{FX}/{name}.log")).unwrap();
    }
    fs::write(format!("{FX}/{name}.out"), stdout_content).unwrap();
}

/// The first of `pids` that exists now, if any.
pub fn taken(pids: &[i32]) -> Option<i32> {
    pids.iter()
        .copied()
        .find(|p| Path::new(&format!("/proc/{p}")).exists())
}

/// Runs a command to completion or kills it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, timeout)
}

pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command timed out after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Waits for a child's exit, killing it after `timeout`.
pub fn wait_status(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Restores `dir` detached and checks that it succeeded; returns the root pid read
/// from the pidfile.
pub fn restore_detached(dir: &Path, extra: &[&str]) -> i32 {
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = restorer();
    cmd.arg("restore")
        .arg("-D")
        .arg(dir)
        .arg("-d")
        .arg("--pidfile")
        .arg(pidfile.path())
        .args(extra)
        .current_dir("/");
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "restore of {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `restorer restore -D dir -d ...extra` expecting failure; returns its stderr.
pub fn restore_fails(dir: &Path, extra: &[&str]) -> String {
    let mut cmd = restorer();
    cmd.arg("restore")
        .arg("-D")
        .arg(dir)
        .arg("-d")
        .args(extra)
        .current_dir("/");
    let out = run_bounded(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "restore succeeded: {stderr}");
    stderr
}

/// Copies the images of `from` (a flat directory) into `to`.
pub fn copy_images(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Lines of `log` after the first `skip` ones, waiting until there are at least `n`.
pub fn wait_new_lines(log: &Path, skip: usize, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().skip(skip).map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} got {} new lines in {timeout:?}, wanted {n}:\n{text}",
            log.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn line_count(path: &Path) -> usize {
    fs::read_to_string(path).unwrap_or_default().lines().count()
}

pub fn proc_status_field(pid: i32, name: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CRIU 4.1 as `scripts/setup` installs it (trixie's, privately, in target/criu-4.1/).
pub fn criu41() -> std::process::Command {
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criu-4.1/bin/criu");
    assert!(
        wrapper.exists(),
        "{} is missing: run scripts/setup (or scripts/criu-setup.sh)",
        wrapper.display()
    );
    std::process::Command::new(wrapper)
}

/// Runs CRIU 4.1 with `args` on `dir` (log `criu.log` there); panics with its errors.
pub fn criu41_in(dir: &Path, args: &[&str]) {
    let mut cmd = criu41();
    cmd.args(args)
        .arg("-D")
        .arg(dir)
        .args(["-o", "criu.log", "-v4"]);
    let out = run_bounded(cmd, Duration::from_secs(60));
    let log = std::fs::read_to_string(dir.join("criu.log")).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .collect();
    assert!(
        out.status.success(),
        "criu {args:?} failed:\n{}",
        errors.join("\n")
    );
}

/// A child program with no stdio, killed and reaped on drop (or reaped earlier with
/// [`Silent::reap`], once a dump has killed it).
pub struct Silent(pub Child);

impl Silent {
    pub fn spawn(program: &str, args: &[&str]) -> Silent {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Silent(child)
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits for the child's end (after a dump killed it).
    pub fn reap(&mut self) {
        self.0.wait().unwrap();
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Binary `bin` of workspace package `package`, built (in this test build's profile)
/// if it is missing or stale.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(bin);
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if cfg!(not(debug_assertions)) {
        cmd.arg("--release");
    }
    let out = run_bounded(cmd, Duration::from_secs(300));
    assert!(
        out.status.success() || path.exists(),
        "building {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// The body of the `#[ignore]`d dump helpers that tests run as a child process (a tracer
/// that exits releases the killed tree for reaping): dumps CRYO_TEST_DUMP_PID into
/// CRYO_TEST_DUMP_DIR, with CRYO_TEST_LEAVE_RUNNING, CRYO_TEST_DUMP_SHELL_JOB,
/// CRYO_TEST_PAGE_SERVER (an address) and CRYO_TEST_CRIU_PAGE_SERVER (CRIU 4.1 framing)
/// when set.
pub fn dump_from_env() {
    let var = |name| std::env::var_os(name);
    let pid = std::env::var("CRYO_TEST_DUMP_PID")
        .unwrap()
        .parse()
        .unwrap();
    cryo_dumper::dump(&cryo_dumper::DumpOptions {
        pid,
        dir: std::env::var("CRYO_TEST_DUMP_DIR").unwrap().into(),
        leave_running: var("CRYO_TEST_LEAVE_RUNNING").is_some(),
        shell_job: var("CRYO_TEST_DUMP_SHELL_JOB").is_some(),
        page_server: std::env::var("CRYO_TEST_PAGE_SERVER")
            .ok()
            .map(|s| s.parse().unwrap()),
        criu_page_server: var("CRYO_TEST_CRIU_PAGE_SERVER").map(|_| cryo_dumper::CriuWire::Legacy),
    })
    .expect("dump");
}
