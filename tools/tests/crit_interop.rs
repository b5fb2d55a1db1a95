//! Debian's python crit (3.17) reads what imgtool encode writes.

mod crit_common;

use std::path::Path;

use crit_common::*;

const CRIT: &str = "/usr/bin/crit";

/// Images whose messages grew fields after crit 3.17: crit reads them but prints less.
fn schema_newer_than_crit(magic: &str) -> bool {
    matches!(magic, "CORE" | "INVENTORY" | "PAGEMAP")
}

#[test]
fn python_crit_decodes_every_image_imgtool_encodes() {
    if !Path::new(CRIT).exists() {
        eprintln!("skipped: {CRIT} is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut identical = 0;
    for set in fixture_sets() {
        for (image, reference) in images_with_json(&set) {
            let encoded = dir.path().join("e.img");
            imgtool_ok(
                &[
                    "encode".as_ref(),
                    "-i".as_ref(),
                    reference.as_os_str(),
                    "-o".as_ref(),
                    encoded.as_os_str(),
                ],
                None,
            );

            let args = ["decode".as_ref(), "-i".as_ref(), encoded.as_os_str()];
            let crit = run_program(Path::new(CRIT), &args, None);
            assert!(
                crit.status.success(),
                "crit cannot decode imgtool's encoding of {}: {}",
                image.display(),
                String::from_utf8_lossy(&crit.stderr)
            );
            let theirs: serde_json::Value = serde_json::from_slice(&crit.stdout).unwrap();
            let ours_text = imgtool_ok(
                &["decode".as_ref(), "-i".as_ref(), encoded.as_os_str()],
                None,
            )
            .stdout;
            let ours: serde_json::Value = serde_json::from_slice(&ours_text).unwrap();

            let magic = ours["magic"].as_str().unwrap();
            assert_eq!(theirs["magic"], ours["magic"], "{}", image.display());
            assert_eq!(
                theirs["entries"].as_array().map(Vec::len),
                ours["entries"].as_array().map(Vec::len),
                "{}",
                image.display()
            );
            if !schema_newer_than_crit(magic) {
                assert!(
                    crit.stdout == ours_text,
                    "{}: crit and imgtool plain decode differ",
                    image.display()
                );
                identical += 1;
            }
        }
    }
    assert!(
        identical > 30,
        "only {identical} images compared byte for byte"
    );
}

#[test]
fn explorers_print_what_python_crit_prints() {
    if !Path::new(CRIT).exists() {
        eprintln!("skipped: {CRIT} is not installed");
        return;
    }
    for set in fixture_sets() {
        for what in ["ps", "fds", "mems"] {
            let args = ["x".as_ref(), set.as_os_str(), what.as_ref()];
            let theirs = run_program(Path::new(CRIT), &args, None);
            assert!(
                theirs.status.success(),
                "crit x {what} failed on {}",
                set.display()
            );
            let ours = imgtool_ok(&args, None);
            assert!(
                ours.stdout == theirs.stdout,
                "x {what} on {} differs from crit:\n{}\n---\n{}",
                set.display(),
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&theirs.stdout)
            );
        }
    }
}

/// crit 3.17 reads page counts from field 2 only (CRIU < 4.2); rewrite each set's pagemaps
/// that way so both tools see the same counts, then compare `x rss`.
#[test]
fn x_rss_matches_python_crit_on_compat_pagemaps() {
    if !Path::new(CRIT).exists() {
        eprintln!("skipped: {CRIT} is not installed");
        return;
    }
    for set in fixture_sets() {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&set).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let target = copy.path().join(&name);
            if !name.starts_with("pagemap-") {
                std::fs::copy(&path, &target).unwrap();
                continue;
            }
            let json =
                imgtool_ok(&["decode".as_ref(), "-i".as_ref(), path.as_os_str()], None).stdout;
            let mut doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
            for e in doc["entries"].as_array_mut().unwrap().iter_mut().skip(1) {
                let e = e.as_object_mut().unwrap();
                let n = e.remove("nr_pages").unwrap();
                e.insert("compat_nr_pages".into(), n);
            }
            let text = serde_json::to_vec(&doc).unwrap();
            imgtool_ok(
                &["encode".as_ref(), "-o".as_ref(), target.as_os_str()],
                Some(&text),
            );
        }

        let args = ["x".as_ref(), copy.path().as_os_str(), "rss".as_ref()];
        let theirs = run_program(Path::new(CRIT), &args, None);
        assert!(
            theirs.status.success(),
            "crit x rss failed on {}",
            set.display()
        );
        let ours = imgtool_ok(&args, None);
        assert!(
            ours.stdout == theirs.stdout,
            "x rss on {} differs from crit",
            set.display()
        );
    }
}
