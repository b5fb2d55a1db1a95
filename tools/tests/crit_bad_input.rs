//! Bad images and bad JSON give a clear error, a non-zero exit and no output file.

mod crit_common;

use std::path::{Path, PathBuf};

use crit_common::*;

fn fixture(set_name: &str, image: &str) -> PathBuf {
    fixture_sets()
        .into_iter()
        .find(|s| s.ends_with(set_name))
        .unwrap()
        .join(image)
}

/// Decodes `bytes` (written to a file) and returns stderr; asserts failure and no output.
fn decode_fails(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.img");
    std::fs::write(&input, bytes).unwrap();
    let out = dir.path().join("out.json");
    let res = imgtool(
        &[
            "decode".as_ref(),
            "--pretty".as_ref(),
            "-i".as_ref(),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        None,
    );
    assert!(!res.status.success(), "decode of bad input succeeded");
    assert_eq!(res.status.code(), Some(1));
    assert!(!out.exists(), "an output file was left behind");
    assert_no_temp_files(dir.path());
    let stderr = String::from_utf8(res.stderr).unwrap();
    assert!(
        stderr.contains("bad.img"),
        "error does not name the file: {stderr}"
    );
    stderr
}

fn assert_no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("tmp"), "temporary file {name} left behind");
    }
}

#[test]
fn truncated_image_is_refused() {
    let core = std::fs::read(fixture("counter", "core-13131.img")).unwrap();
    let err = decode_fails(&core[..core.len() - 10]);
    assert!(err.contains("entry 0"), "{err}");
}

#[test]
fn truncated_header_is_refused() {
    let err = decode_fails(&[0x19, 0x43]);
    assert!(err.contains("header"), "{err}");
}

#[test]
fn wrong_magic_is_refused() {
    let mut fs = std::fs::read(fixture("counter", "fs-13131.img")).unwrap();
    fs[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    let err = decode_fails(&fs);
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn pages_image_is_refused_as_unknown_magic() {
    let pages = std::fs::read(fixture("counter", "pages-1.img")).unwrap();
    let err = decode_fails(&pages[..8192]);
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn length_past_end_is_refused() {
    let mut fs = std::fs::read(fixture("counter", "fs-13131.img")).unwrap();
    let len = u32::from_le_bytes(fs[8..12].try_into().unwrap());
    fs[8..12].copy_from_slice(&(len + 5).to_le_bytes());
    let err = decode_fails(&fs);
    assert!(err.contains("entry 0"), "{err}");
}

#[test]
fn absurd_length_is_refused() {
    let mut fs = std::fs::read(fixture("counter", "fs-13131.img")).unwrap();
    fs[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_fails(&fs);
    assert!(err.contains("entry 0"), "{err}");
}

#[test]
fn invalid_utf8_in_a_path_names_entry_and_field() {
    let files = std::fs::read(fixture("counter", "files.img")).unwrap();
    let at = files.windows(7).position(|w| w == b"/tmp/fx").unwrap();
    let mut bad = files.clone();
    bad[at + 1] = 0xff;
    let err = decode_fails(&bad);
    assert!(err.contains("reg.name"), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
    assert!(err.contains("entry "), "{err}");
}

#[test]
fn missing_required_field_names_it() {
    // An fs entry holding only cwd_id (field 1): root_id is required.
    let mut img = Vec::new();
    img.extend_from_slice(&0x5456_4319_u32.to_le_bytes());
    img.extend_from_slice(&0x5140_3912_u32.to_le_bytes());
    img.extend_from_slice(&2u32.to_le_bytes());
    img.extend_from_slice(&[0x08, 0x01]);
    let err = decode_fails(&img);
    assert!(err.contains("root_id"), "{err}");
}

/// Encodes `json` and returns stderr; asserts failure and no output.
fn encode_fails(json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.json");
    std::fs::write(&input, json).unwrap();
    let out = dir.path().join("out.img");
    let res = imgtool(
        &[
            "encode".as_ref(),
            "-i".as_ref(),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        None,
    );
    assert_eq!(
        res.status.code(),
        Some(1),
        "encode of bad JSON did not fail"
    );
    assert!(!out.exists(), "an output file was left behind");
    assert_no_temp_files(dir.path());
    String::from_utf8(res.stderr).unwrap()
}

#[test]
fn encode_refuses_binary_input() {
    let err = encode_fails("\u{19}CVT garbage");
    assert!(err.contains("JSON"), "{err}");
}

#[test]
fn encode_names_the_entry_and_field_of_a_bad_value() {
    let err = encode_fails(
        r#"{"magic": "FS", "entries": [{"cwd_id": 1, "root_id": 1}, {"cwd_id": "nope", "root_id": 1}]}"#,
    );
    assert!(err.contains("entry 1"), "{err}");
    assert!(err.contains("cwd_id"), "{err}");
    // The cause is printed once, on one line.
    assert_eq!(err.matches("cwd_id").count(), 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn encode_refuses_missing_required_and_unknown_magic() {
    let err = encode_fails(r#"{"magic": "FS", "entries": [{"cwd_id": 1}]}"#);
    assert!(err.contains("root_id"), "{err}");
    let err = encode_fails(r#"{"magic": "NOPE", "entries": []}"#);
    assert!(err.contains("NOPE"), "{err}");
}

#[test]
fn pages_image_gets_a_hint_about_raw_data() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages-1.img");
    std::fs::copy(fixture("counter", "pages-1.img"), &pages).unwrap();
    let res = imgtool(&["decode".as_ref(), "-i".as_ref(), pages.as_os_str()], None);
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8(res.stderr).unwrap();
    assert!(
        err.contains("raw data") && err.contains("pages-1.img"),
        "{err}"
    );
    assert!(res.stdout.is_empty());
}
