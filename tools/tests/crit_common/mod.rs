//! Shared helpers of the crit-compatibility tests: running imgtool (bounded in time) and
//! walking the fixture image sets.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The CRIU 4.2 image sets under fixtures/criu-images (each has a NAME-json sibling).
pub fn fixture_sets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures/criu-images is readable")
        .map(|e| e.expect("fixture dir entry").path())
        .filter(|p| json_dir(p).is_dir())
        .collect();
    sets.sort();
    assert!(!sets.is_empty(), "no fixture sets in {}", root.display());
    sets
}

/// `SET-json`, beside the set.
pub fn json_dir(set: &Path) -> PathBuf {
    let mut name = set.file_name().unwrap().to_os_string();
    name.push("-json");
    set.with_file_name(name)
}

/// (image path, reference JSON path) of every non-raw image of `set`.
pub fn images_with_json(set: &Path) -> Vec<(PathBuf, PathBuf)> {
    let jdir = json_dir(set);
    let mut out: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|json| {
            let name = json
                .file_name()?
                .to_str()?
                .strip_suffix(".json")?
                .to_owned();
            Some((set.join(name), json))
        })
        .collect();
    out.sort();
    out
}

/// Runs a program with `stdin` fed in, killing it if it outlives [`TIMEOUT`].
pub fn run_program(program: &Path, args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(data).unwrap();
    }

    // Drain output on threads so a large output cannot block the child.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out_pipe, &mut v).ok();
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err_pipe, &mut v).ok();
        v
    });

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "{} {:?} did not finish within {TIMEOUT:?}",
                program.display(),
                args
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// Runs imgtool.
pub fn imgtool<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    run_program(Path::new(env!("CARGO_BIN_EXE_imgtool")), &args, stdin)
}

/// Runs imgtool and insists on success.
pub fn imgtool_ok<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let out = imgtool(args, stdin);
    assert!(
        out.status.success(),
        "imgtool {:?} failed: {}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
