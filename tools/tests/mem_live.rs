//! `imgtool mem --cmdline --env` on a live process dumped by cryo's dumper: argv and
//! environment read from the images equal /proc/PID/cmdline and /proc/PID/environ read just
//! before the dump.

mod validate_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryo_dumper::{DumpOptions, dump};
use validate_common::imgtool;

/// Kills and reaps the child on drop, also when the test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nul_split(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    bytes
        .split(|&byte| byte == 0)
        .map(|s| String::from_utf8(s.to_vec()).expect("utf-8"))
        .collect()
}

#[test]
fn live_python_argv_and_environment_match_proc() {
    let tmp = tempfile::tempdir().unwrap();
    let script = "import time\nwhile True:\n    time.sleep(0.05)";
    let child = Command::new("/usr/bin/python3")
        .args(["-c", script, "cryo-arg-1", "two words", ""])
        .env_clear()
        .env("CRYO_MARK", "mem-live-42")
        .env("LANG", "C")
        .env("PATH", "/usr/bin:/bin")
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 starts");
    let guard = ChildGuard(child);
    let pid = guard.0.id();

    // Wait until the interpreter runs its loop (argv is python's, and it has settled).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (cmdline, environ) = loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let sleeping = stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('S'));
        if cmdline.starts_with(b"/usr/bin/python3\0-c\0") && sleeping {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            break (cmdline, environ);
        }
        assert!(Instant::now() < deadline, "python3 did not start its loop");
        std::thread::sleep(Duration::from_millis(50));
    };

    let dir = tmp.path().join("dump");
    dump(&DumpOptions {
        pid: pid as i32,
        dir: dir.clone(),
        leave_running: false,
        shell_job: false,
        page_server: None,
        criu_page_server: None,
    })
    .expect("the dumper checkpoints python3");

    let run = imgtool(&["mem", dir.to_str().unwrap(), "--cmdline", "--env", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let doc = run.json();
    let argv: Vec<String> = serde_json::from_value(doc["argv"].clone()).unwrap();
    let env: Vec<String> = serde_json::from_value(doc["env"].clone()).unwrap();
    assert_eq!(argv, nul_split(&cmdline));
    assert_eq!(env, nul_split(&environ));
    assert_eq!(&argv[3..], ["cryo-arg-1", "two words", ""]);
    assert!(env.contains(&"CRYO_MARK=mem-live-42".to_owned()), "{env:?}");
    assert_eq!(doc["pid"], pid);

    // cryo's own dump passes every rule of the validator.
    let run = imgtool(&["validate", dir.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    drop(guard);
}
