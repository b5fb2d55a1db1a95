//! `imgtool diff` on real CRIU sets: the `series` pair (one `mem 16` process dumped twice,
//! 2 s apart), sets against themselves, parent chains, and targeted changes to a copy.

mod validate_common;

use std::os::unix::fs::symlink;

use cryo_format::magic::well_known;
use cryo_format::schema::{CoreEntry, FdinfoEntry, MmEntry};
use serde_json::Value;
use validate_common::*;

fn diff_json(a: &str, b: &str) -> Value {
    let run = imgtool(&["diff", "--json", a, b]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.json()
}

fn task(report: &Value, pid: u64) -> &Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no task {pid} in {report:#}"))
}

fn vma_row(task: &Value, vaddr: u64) -> &Value {
    task["pages"]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| hex(&row["start"]) <= vaddr && vaddr < hex(&row["end"]))
        .unwrap_or_else(|| panic!("no page row holds {vaddr:#x}"))
}

fn counts(row: &Value) -> [u64; 4] {
    ["identical", "changed", "only_a", "only_b"].map(|key| row[key].as_u64().unwrap())
}

/// The address and value of the `tick=N` counter line the workload keeps on its stack.
fn tick_on_stack(set: &str) -> (u64, u64) {
    let run = imgtool(&[
        "mem",
        &set_path(set),
        "--regex",
        "pid=13505 tick=[0-9]+",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let hits = run.json();
    let hit = hits
        .as_array()
        .unwrap()
        .iter()
        .find(|hit| hit["vma"] == "stack")
        .expect("the tick line is on the stack");
    let vaddr = hex(&hit["vaddr"]);
    let len = hit["len"].as_u64().unwrap() as usize;
    let text = read_via_crit_json(set, 13505, vaddr, len);
    let text = String::from_utf8(text).unwrap();
    let tick = text.rsplit('=').next().unwrap().parse().unwrap();
    (vaddr, tick)
}

fn set_path(name: &str) -> String {
    fixture(name).to_str().unwrap().to_owned()
}

#[test]
fn series_reports_counter_pages_changed_and_pattern_region_identical() {
    let report = diff_json(&set_path("series-t0"), &set_path("series-t1"));
    assert_eq!(report["version"], 1);
    assert_eq!(report["changed"], true);
    assert_eq!(report["processes"]["added"], Value::Array(vec![]));
    assert_eq!(report["processes"]["removed"], Value::Array(vec![]));
    let task = task(&report, 13505);

    // The 16 MiB patterned region: every page dumped in both, none changed.
    let region = task["pages"]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| hex(&row["end"]) - hex(&row["start"]) == 16 << 20)
        .expect("the 16 MiB region");
    assert_eq!(region["kind"], "anon");
    assert_eq!(counts(region), [4096, 0, 0, 0]);

    // The counter line moved from one tick to a later one, at the same address: its page
    // must be counted as changed.
    let (vaddr_t0, tick_t0) = tick_on_stack("series-t0");
    let (vaddr_t1, tick_t1) = tick_on_stack("series-t1");
    assert_eq!(vaddr_t0, vaddr_t1);
    assert!(tick_t1 > tick_t0, "ticks {tick_t0} then {tick_t1}");
    let stack = vma_row(task, vaddr_t0);
    assert!(stack["changed"].as_u64().unwrap() >= 1, "{stack:#}");

    // Totals add up over the rows.
    let mut sum = [0u64; 4];
    for row in task["pages"]["vmas"].as_array().unwrap() {
        for (total, value) in sum.iter_mut().zip(counts(row)) {
            *total += value;
        }
    }
    assert_eq!(sum, counts(&task["pages"]));
    assert_eq!(counts(&report["pages"]), counts(&task["pages"]));

    // The log the workload appends to moved on between the dumps.
    let changed = task["fds"]["changed"].as_array().unwrap();
    let log = changed
        .iter()
        .find(|fd| fd["fd"] == 3)
        .expect("fd 3 (the log) changed");
    assert!(
        log["a"]
            .as_str()
            .unwrap()
            .starts_with("/tmp/fx/series.log pos=")
    );
    assert_ne!(log["a"], log["b"]);

    let text = imgtool(&["diff", &set_path("series-t0"), &set_path("series-t1")]);
    assert!(
        text.stdout.contains("process 13505 (mem):"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(" changed, "), "{}", text.stdout);
}

#[test]
fn every_set_diffed_with_itself_reports_no_change() {
    for set in fixture_sets() {
        let path = set.to_str().unwrap();
        let report = diff_json(path, path);
        assert_eq!(report["changed"], false, "{path}");
        let [identical, changed, only_a, only_b] = counts(&report["pages"]);
        assert!(identical > 0, "{path}");
        assert_eq!([changed, only_a, only_b], [0, 0, 0], "{path}");
        for task in report["tasks"].as_array().unwrap() {
            assert_eq!(task["registers"], Value::Array(vec![]));
            assert_eq!(task["sigactions"], Value::Array(vec![]));
            assert_eq!(task["state"], Value::Array(vec![]));
            assert_eq!(task["vmas"]["added"], Value::Array(vec![]));
        }
        let text = imgtool(&["diff", path, path]);
        assert!(text.stdout.ends_with("no change\n"), "{}", text.stdout);
    }
}

#[test]
fn pages_held_by_a_parent_compare_by_content() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, 13131);
    let parent = set.tmp.path().join("predump");
    copy_dir(&fixture("counter"), &parent);
    symlink("../predump", set.path("parent")).unwrap();

    let report = diff_json(&set_path("counter"), set.dir_str());
    assert_eq!(report["changed"], false, "{report:#}");

    // The parent's copy of the stack differs: now the pages must show as changed.
    let mut pages = std::fs::read(parent.join("pages-1.img")).unwrap();
    let last = pages.len() - 1;
    pages[last] ^= 0xff;
    std::fs::write(parent.join("pages-1.img"), pages).unwrap();
    let report = diff_json(&set_path("counter"), set.dir_str());
    let stack = vma_row(task(&report, 13131), 0x7ffc_a7af_0000);
    assert_eq!(counts(stack)[1], 1, "{stack:#}");
}

#[test]
fn targeted_changes_are_each_reported() {
    let set = copy_set("counter");
    // One byte of the first page of the 8 MiB region (entry 4; entries 1-3 hold 5 pages).
    let mut pages = std::fs::read(set.path("pages-1.img")).unwrap();
    pages[5 * 4096 + 100] ^= 1;
    std::fs::write(set.path("pages-1.img"), pages).unwrap();
    rewrite::<MmEntry>(&set.path("mm-13131.img"), well_known::mm(), |mm| {
        mm[0].vmas[13].prot = 1; // rw- -> r--
        mm[0].vmas[5].end += 0x1000; // the heap grows by a page
    });
    rewrite::<FdinfoEntry>(&set.path("fdinfo-2.img"), well_known::fdinfo(), |fds| {
        fds[4].fd = 20; // fd 10 -> fd 20
        fds.remove(5); // the pipe at fd 251 closed
    });
    rewrite::<CoreEntry>(&set.path("core-13131.img"), well_known::core(), |cores| {
        cores[0].thread_info.as_mut().unwrap().gpregs.ip += 2;
        let tc = cores[0].tc.as_mut().unwrap();
        tc.sigactions[9].sigaction = 0x1234; // signal 10
        tc.blk_sigset |= 1 << 9; // SIGUSR1 blocked
        tc.rlimits.as_mut().unwrap().rlimits[7].cur = 64; // RLIMIT_NOFILE
    });

    let report = diff_json(&set_path("counter"), set.dir_str());
    assert_eq!(report["changed"], true);
    let task = task(&report, 13131);

    let region = vma_row(task, 0x7f50_5c60_0000);
    assert_eq!(counts(region), [2047, 1, 0, 0]);

    let vmas = &task["vmas"];
    assert_eq!(vmas["reprotected"].as_array().unwrap().len(), 1);
    assert_eq!(vmas["reprotected"][0]["prot_a"], "rw-");
    assert_eq!(vmas["reprotected"][0]["prot_b"], "r--");
    assert_eq!(vmas["resized"].as_array().unwrap().len(), 1);
    assert_eq!(
        hex(&vmas["resized"][0]["end_b"]) - hex(&vmas["resized"][0]["end_a"]),
        0x1000
    );

    let fds = &task["fds"];
    assert_eq!(fds["moved"][0]["from"], 10);
    assert_eq!(fds["moved"][0]["to"], 20);
    assert_eq!(fds["closed"][0]["fd"], 251);
    assert!(
        fds["closed"][0]["desc"]
            .as_str()
            .unwrap()
            .starts_with("pipe[")
    );

    let registers = &task["registers"][0];
    assert_eq!(registers["tid"], 13131);
    assert_eq!(registers["changes"][0]["name"], "ip");
    assert_eq!(
        hex(&registers["changes"][0]["b"]) - hex(&registers["changes"][0]["a"]),
        2
    );

    assert_eq!(task["sigactions"][0]["signal"], 10);
    assert_eq!(task["sigactions"][0]["b"]["handler"], "0x1234");

    let state = task["state"].as_array().unwrap();
    let names: Vec<&str> = state
        .iter()
        .map(|change| change["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blk_sigset", "rlimit_nofile.cur"]);
    assert_eq!(hex(&state[0]["b"]) ^ hex(&state[0]["a"]), 1 << 9);
    assert_eq!(state[1]["b"], "0x40");
}

#[test]
fn processes_added_and_gone_are_listed() {
    let report = diff_json(&set_path("counter"), &set_path("threads4"));
    assert_eq!(report["processes"]["added"], serde_json::json!([13178]));
    assert_eq!(report["processes"]["removed"], serde_json::json!([13131]));
    assert_eq!(report["tasks"], serde_json::json!([]));
}

#[test]
fn threads_added_and_gone_are_listed() {
    let set = copy_set("threads4");
    rewrite::<cryo_format::schema::PstreeEntry>(
        &set.path("pstree.img"),
        well_known::pstree(),
        |tree| {
            let gone = tree[0].threads.remove(2);
            assert_eq!(gone, 13181);
        },
    );
    std::fs::remove_file(set.path("core-13181.img")).unwrap();
    rewrite::<CoreEntry>(&set.path("core-13178.img"), well_known::core(), |cores| {
        cores[0].tc.as_mut().unwrap().comm = "renamed".to_owned();
    });

    let report = diff_json(&set_path("threads4"), set.dir_str());
    let leader = task(&report, 13178);
    assert_eq!(leader["threads"]["removed"], serde_json::json!([13181]));
    assert_eq!(leader["threads"]["added"], serde_json::json!([]));
    assert_eq!(leader["comm"], "mem");
    assert_eq!(leader["comm_b"], "renamed");

    // The other way round the thread is added.
    let report = diff_json(set.dir_str(), &set_path("threads4"));
    let leader = task(&report, 13178);
    assert_eq!(leader["threads"]["added"], serde_json::json!([13181]));
}

/// A pre-dump round made from the counter set: inventory, pagemap and pages only.
fn predump_round(tmp: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["inventory.img", "pagemap-13131.img", "pages-1.img"] {
        std::fs::copy(fixture("counter").join(file), dir.join(file)).unwrap();
    }
    dir
}

#[test]
fn predump_rounds_are_diffed_by_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let round1 = predump_round(tmp.path(), "round1");
    let round2 = predump_round(tmp.path(), "round2");

    let report = diff_json(round1.to_str().unwrap(), round2.to_str().unwrap());
    assert_eq!(report["changed"], false);
    let rows = task(&report, 13131)["pages"]["vmas"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["kind"], "unmapped");
    assert_eq!(counts(&rows[0]), [2077, 0, 0, 0]);

    // Round 2 keeps the stack in round 1 (a parent hole) and re-dumps one changed page.
    let copy = SetCopy {
        dir: round2.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    make_last_entry_a_parent_hole(&copy, 13131);
    symlink("../round1", round2.join("parent")).unwrap();
    let mut pages = std::fs::read(round2.join("pages-1.img")).unwrap();
    pages[5 * 4096] ^= 1;
    std::fs::write(round2.join("pages-1.img"), pages).unwrap();

    let report = diff_json(round1.to_str().unwrap(), round2.to_str().unwrap());
    assert_eq!(counts(&report["pages"]), [2076, 1, 0, 0]);

    // mem reads a pre-dump too: the pattern word is found without any VMA.
    let word: String = (0xC0DE_0000_0000_0003u64)
        .to_le_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let run = imgtool(&[
        "mem",
        round2.to_str().unwrap(),
        "--search-hex",
        &word,
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(hex(&run.json()[0]["vaddr"]), 0x7f50_5c60_0018);
}
