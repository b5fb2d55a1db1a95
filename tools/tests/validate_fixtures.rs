//! `imgtool validate` accepts every real CRIU 4.2 set, and never panics on damaged ones.

mod validate_common;

use std::fs::OpenOptions;

use validate_common::*;

#[test]
fn every_fixture_set_is_sound() {
    for set in fixture_sets() {
        let (code, problems) = validate(&set);
        assert_eq!(problems, vec![], "{}", set.display());
        assert_eq!(code, Some(0), "{}", set.display());

        let run = imgtool(&["validate", set.to_str().unwrap()]);
        assert_eq!(run.code, Some(0));
        assert!(run.stdout.contains(": sound ("), "{}", run.stdout);
    }
}

#[test]
fn truncating_any_image_anywhere_gives_problems_not_panics() {
    let pristine = copy_set("pipe-tree");
    let names: Vec<String> = std::fs::read_dir(&pristine.dir)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();

    for name in names {
        let len = std::fs::metadata(pristine.path(&name)).unwrap().len();
        for cut in [1, 5, 9, len / 2, len.saturating_sub(1)] {
            if cut == 0 || cut >= len {
                continue;
            }
            let set = copy_set("pipe-tree");
            let file = OpenOptions::new()
                .write(true)
                .open(set.path(&name))
                .unwrap();
            file.set_len(cut).unwrap();

            let run = imgtool(&["validate", "--json", set.dir_str()]);
            assert_eq!(run.code, Some(1), "{name} cut at {cut}: {}", run.stdout);
            assert!(
                !run.stderr.contains("panicked"),
                "{name} cut at {cut}: {}",
                run.stderr
            );
            let problems = run.json()["problems"].as_array().unwrap().len();
            assert!(problems >= 1, "{name} cut at {cut}");

            // The other verbs refuse the damaged set with an error, not a panic.
            for verb in [vec!["mem"], vec!["diff", pristine.dir_str()]] {
                let mut args = verb.clone();
                args.push(set.dir_str());
                let run = imgtool(&args);
                assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
            }
        }
    }
}

#[test]
fn unreadable_directory_is_one_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let (code, problems) = validate(&missing);
    assert_eq!(code, Some(1));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "missing-image");
    assert_eq!(problems[0].1, missing.display().to_string());
}
