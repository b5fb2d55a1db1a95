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
