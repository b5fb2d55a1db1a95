//! imgtool decode/encode against the real CRIU 4.2 image sets and the JSON CRIU's crit
//! wrote for them: the JSON must be identical and the re-encoded image byte-identical.

mod crit_common;

use crit_common::*;

#[test]
fn pretty_decode_equals_crit_json_for_every_fixture_image() {
    let out_dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for set in fixture_sets() {
        for (image, reference) in images_with_json(&set) {
            let out = out_dir.path().join("out.json");
            imgtool_ok(
                &[
                    "decode".as_ref(),
                    "--pretty".as_ref(),
                    "-i".as_ref(),
                    image.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                ],
                None,
            );
            let ours = std::fs::read(&out).unwrap();
            let theirs = std::fs::read(&reference).unwrap();
            assert!(
                ours == theirs,
                "{}: decode --pretty differs from {}",
                image.display(),
                reference.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} images checked");
}

#[test]
fn encode_of_crit_json_gives_back_the_original_bytes() {
    let out_dir = tempfile::tempdir().unwrap();
    for set in fixture_sets() {
        for (image, reference) in images_with_json(&set) {
            let out = out_dir.path().join("out.img");
            imgtool_ok(
                &[
                    "encode".as_ref(),
                    "-i".as_ref(),
                    reference.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                ],
                None,
            );
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&image).unwrap(),
                "{}: encode of {} is not byte-identical",
                image.display(),
                reference.display()
            );
        }
    }
}

#[test]
fn plain_decode_through_stdin_and_stdout_round_trips() {
    for set in fixture_sets() {
        for (image, _) in images_with_json(&set) {
            let original = std::fs::read(&image).unwrap();
            let json = imgtool_ok(&["decode"], Some(&original)).stdout;
            assert_eq!(
                json.last(),
                Some(&b'\n'),
                "stdout output ends with a newline"
            );
            let text = std::str::from_utf8(&json).unwrap();
            assert!(
                !text.contains("\n    "),
                "plain decode is one line: {}",
                image.display()
            );
            let back = imgtool_ok(&["encode"], Some(&json)).stdout;
            assert!(
                back == original,
                "{}: plain round trip differs",
                image.display()
            );
        }
    }
}

#[test]
fn directory_decode_writes_every_image_and_skips_pages() {
    let set = fixture_sets()
        .into_iter()
        .find(|s| s.ends_with("pipe-tree"))
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    imgtool_ok(
        &[
            "decode".as_ref(),
            "--pretty".as_ref(),
            "-D".as_ref(),
            set.as_os_str(),
            "-o".as_ref(),
            out.path().as_os_str(),
        ],
        None,
    );

    let mut written: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let mut expected: Vec<String> = std::fs::read_dir(json_dir(&set))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    expected.sort();
    assert_eq!(written, expected);
    for name in &written {
        assert!(
            std::fs::read(out.path().join(name)).unwrap()
                == std::fs::read(json_dir(&set).join(name)).unwrap(),
            "{name} differs"
        );
    }
}

#[test]
fn show_nopl_summarises_payloads_and_info_counts_entries() {
    let set = fixture_sets()
        .into_iter()
        .find(|s| s.ends_with("pipe-tree"))
        .unwrap();
    let pipes = set.join("pipes-data.img");
    let shown = imgtool_ok(
        &["show".as_ref(), "--nopl".as_ref(), pipes.as_os_str()],
        None,
    )
    .stdout;
    let doc: serde_json::Value = serde_json::from_slice(&shown).unwrap();
    let extra = doc["entries"][0]["extra"].as_str().unwrap();
    let bytes = doc["entries"][0]["bytes"].as_u64().unwrap();
    assert_eq!(extra, format!("... <{bytes}B>"));

    let pagemap = std::fs::read_dir(&set)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("pagemap-")
        })
        .unwrap();
    let info = imgtool_ok(&["info".as_ref(), pagemap.as_os_str()], None).stdout;
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    let json = std::fs::read(json_dir(&set).join(format!(
        "{}.json",
        pagemap.file_name().unwrap().to_str().unwrap()
    )))
    .unwrap();
    let reference: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(info["magic"], "PAGEMAP");
    // The head is not counted.
    assert_eq!(
        info["count"].as_u64().unwrap() as usize,
        reference["entries"].as_array().unwrap().len() - 1
    );
}

#[test]
fn directory_decode_then_encode_rebuilds_every_image() {
    for set in fixture_sets() {
        // A dump directory also holds logs; they are not images and must not get in the way.
        let input = tempfile::tempdir().unwrap();
        for (image, _) in images_with_json(&set) {
            std::fs::copy(&image, input.path().join(image.file_name().unwrap())).unwrap();
        }
        std::fs::write(input.path().join("dump.log"), "(00.000) Version: 4.2\n").unwrap();

        let json = tempfile::tempdir().unwrap();
        let rebuilt = tempfile::tempdir().unwrap();
        imgtool_ok(
            &[
                "decode".as_ref(),
                "-D".as_ref(),
                input.path().as_os_str(),
                "-o".as_ref(),
                json.path().as_os_str(),
            ],
            None,
        );
        imgtool_ok(
            &[
                "encode".as_ref(),
                "-D".as_ref(),
                json.path().as_os_str(),
                "-o".as_ref(),
                rebuilt.path().as_os_str(),
            ],
            None,
        );
        for (image, _) in images_with_json(&set) {
            let name = image.file_name().unwrap();
            assert!(
                std::fs::read(rebuilt.path().join(name)).unwrap() == std::fs::read(&image).unwrap(),
                "{} not rebuilt byte for byte",
                image.display()
            );
        }
        assert!(!rebuilt.path().join("dump.log").exists());
    }
}
