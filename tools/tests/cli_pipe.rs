//! imgtool piped into a reader that stops early (`imgtool ... | head`) ends quietly.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn output_to_a_closed_pipe_is_not_an_error() {
    let set = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images/counter");
    // A hexdump of the whole 8 MiB patterned region: far more than a pipe buffer holds, so
    // imgtool is still writing when the reader hangs up.
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .arg("mem")
        .arg(&set)
        .args(["--addr", "0x7f505c600000+0x800000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imgtool");

    // Read the first line's worth, then hang up like `head -n1` does.
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().expect("wait for imgtool");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}, stderr: {stderr}", out.status);
    assert!(stderr.is_empty(), "nothing to report, got: {stderr}");
    assert!(String::from_utf8_lossy(&first).contains("7f505c600000"));
}
