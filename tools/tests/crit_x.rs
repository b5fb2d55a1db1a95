//! `imgtool x` explorers on the fixture sets.

mod crit_common;

use crit_common::*;

fn set(name: &str) -> std::path::PathBuf {
    fixture_sets()
        .into_iter()
        .find(|s| s.ends_with(name))
        .unwrap_or_else(|| panic!("fixture set {name} missing"))
}

#[test]
fn x_ps_shows_the_pipe_tree_with_children_indented() {
    let dir = set("pipe-tree");
    let out = imgtool_ok(&["x".as_ref(), dir.as_os_str(), "ps".as_ref()], None).stdout;
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "    PID   PGID    SID   COMM");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].ends_with("   pipe3"), "root not indented: {text}");
    assert!(
        lines[2].ends_with("       pipe3"),
        "child indented by 4: {text}"
    );
    assert!(
        lines[3].ends_with("       pipe3"),
        "child indented by 4: {text}"
    );
    let pids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
}

#[test]
fn x_ps_on_threads_lists_one_process() {
    let out = imgtool_ok(
        &["x".as_ref(), set("threads4").as_os_str(), "ps".as_ref()],
        None,
    )
    .stdout;
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
}

#[test]
fn x_fds_names_files_pipes_cwd_and_root() {
    let out = imgtool_ok(
        &["x".as_ref(), set("pipe-tree").as_os_str(), "fds".as_ref()],
        None,
    )
    .stdout;
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("pipe["), "{text}");
    assert!(text.contains("    cwd: /tmp/fx"), "{text}");
    assert!(text.contains("   root: /"), "{text}");
}

#[test]
fn x_mems_and_rss_walk_every_process() {
    let dir = set("counter");
    let mems = String::from_utf8(
        imgtool_ok(&["x".as_ref(), dir.as_os_str(), "mems".as_ref()], None).stdout,
    )
    .unwrap();
    assert!(mems.contains("libc.so.6"), "{mems}");
    assert!(mems.contains("[vdso]"), "{mems}");
    let rss = String::from_utf8(
        imgtool_ok(&["x".as_ref(), dir.as_os_str(), "rss".as_ref()], None).stdout,
    )
    .unwrap();
    assert!(rss.lines().count() > 5, "{rss}");
}
