//! `imgtool mem` on real CRIU sets: the VMA table, search hits at the right address (checked
//! against bytes read independently through crit's JSON of the pagemap), hexdumps, and argv /
//! environment read from the process's own memory.

mod validate_common;

use serde_json::Value;
use validate_common::*;

const COUNTER: u32 = 13131;
const REGION: u64 = 0x7f50_5c60_0000; // the counter's 8 MiB patterned mapping

fn mem_json(args: &[&str]) -> Value {
    let mut all = vec!["mem"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = imgtool(&all);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.json()
}

fn set(name: &str) -> String {
    fixture(name).to_str().unwrap().to_owned()
}

#[test]
fn table_shows_where_each_vmas_pages_live() {
    let rows = mem_json(&[&set("counter"), "--pid", "13131"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 24);

    let region = rows
        .iter()
        .find(|row| hex(&row["start"]) == REGION)
        .unwrap();
    assert_eq!(region["size"], 8 << 20);
    assert_eq!(region["prot"], "rw-");
    assert_eq!(region["kind"], "anon");
    assert_eq!(region["resident"], 2048);
    assert_eq!(region["in_pages"], 2048);
    assert_eq!(region["not_dumped"], 0);

    let libc_text = rows
        .iter()
        .find(|row| {
            row["prot"] == "r-x" && row["path"].as_str().is_some_and(|p| p.contains("libc"))
        })
        .unwrap();
    assert_eq!(libc_text["kind"], "file");
    assert_eq!(libc_text["resident"], 0);
    assert_eq!(libc_text["not_dumped_is"], "file");

    // Every dumped page of the pagemap is in exactly one row.
    let resident: u64 = rows
        .iter()
        .map(|row| row["resident"].as_u64().unwrap())
        .sum();
    let pages = std::fs::metadata(fixture("counter").join("pages-1.img"))
        .unwrap()
        .len();
    assert_eq!(resident * 4096, pages);
}

#[test]
fn table_filters_by_kind_and_protection() {
    let heap = mem_json(&[&set("counter"), "--kind", "heap"]);
    assert_eq!(heap.as_array().unwrap().len(), 1);
    assert_eq!(heap[0]["kind"], "heap");

    let exec = mem_json(&[&set("python3"), "--prot", "x"]);
    assert!(!exec.as_array().unwrap().is_empty());
    for row in exec.as_array().unwrap() {
        assert!(row["prot"].as_str().unwrap().ends_with('x'), "{row}");
    }

    let run = imgtool(&["mem", &set("counter"), "--kind", "heapish"]);
    assert_eq!(run.code, Some(2), "clap refuses an unknown kind");
    assert!(run.stderr.contains("unknown VMA kind"), "{}", run.stderr);
}

#[test]
fn pattern_word_is_found_at_its_address() {
    // Word i of the region is 0xC0DE000000000000 | i, little-endian in memory.
    let index = 0x1234u64;
    let word = (0xC0DE_0000_0000_0000u64 | index).to_le_bytes();
    let hex_word: String = word.iter().map(|byte| format!("{byte:02x}")).collect();

    let hits = mem_json(&[&set("counter"), "--search-hex", &hex_word]);
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let vaddr = hex(&hits[0]["vaddr"]);
    assert_eq!(vaddr, REGION + 8 * index);
    assert_eq!(read_via_crit_json("counter", COUNTER, vaddr, 8), word);
}

#[test]
fn log_path_string_is_found_where_the_pages_hold_it() {
    let needle = "/tmp/fx/counter.log";
    let hits = mem_json(&[&set("counter"), "--search", needle, "--context", "4"]);
    let hits = hits.as_array().unwrap();
    assert!(!hits.is_empty());
    for hit in hits {
        let vaddr = hex(&hit["vaddr"]);
        assert_eq!(
            read_via_crit_json("counter", COUNTER, vaddr, needle.len()),
            needle.as_bytes()
        );
        assert!(hit["context"].as_str().unwrap().contains(needle));
    }

    // The argv copy of the path is among them, inside mm_arg_start..mm_arg_end.
    let arg_start = crit_field("counter", "mm-13131.img", "mm_arg_start");
    let arg_end = crit_field("counter", "mm-13131.img", "mm_arg_end");
    assert!(
        hits.iter()
            .any(|hit| (arg_start..arg_end).contains(&hex(&hit["vaddr"])))
    );

    let text = imgtool(&["mem", &set("counter"), "--regex", "counter\\.lo[g]"]);
    assert!(
        text.stdout.ends_with(&format!("{} hit(s)\n", hits.len())),
        "{}",
        text.stdout
    );
}

#[test]
fn hexdump_shows_bytes_and_names_holes() {
    let start = REGION + 0x10;
    let run = imgtool(&["mem", &set("counter"), "--addr", &format!("{start:#x}+32")]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    // Words 2 and 3 of the pattern.
    assert_eq!(
        lines[0],
        format!(
            "{start:016x}  02 00 00 00 00 00 de c0  03 00 00 00 00 00 de c0  |................|"
        )
    );

    // The heap's last page was not dumped: anonymous, so zero-filled on restore.
    let heap_end = 0x5640_a4d9_0000u64;
    let run = imgtool(&[
        "mem",
        &set("counter"),
        "--addr",
        &format!("{:#x}+16", heap_end - 16),
    ]);
    assert!(
        run.stdout.contains("16 bytes not dumped: zero-filled heap"),
        "{}",
        run.stdout
    );

    let run = imgtool(&["mem", &set("counter"), "--addr", "0x10+16"]);
    assert!(run.stdout.contains("outside every VMA"), "{}", run.stdout);
}

/// argv and environment as they lie in the pages, read without imgtool.
fn strings_via_crit_json(name: &str, pid: u32, start_field: &str, end_field: &str) -> Vec<String> {
    let mm = format!("mm-{pid}.img");
    let start = crit_field(name, &mm, start_field);
    let end = crit_field(name, &mm, end_field);
    let bytes = read_via_crit_json(name, pid, start, (end - start) as usize);
    bytes
        .strip_suffix(&[0])
        .unwrap_or(&bytes)
        .split(|&byte| byte == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

#[test]
fn python_argv_and_environment_come_from_its_memory() {
    let doc = mem_json(&[&set("python3"), "--cmdline", "--env"]);
    let argv: Vec<String> = serde_json::from_value(doc["argv"].clone()).unwrap();
    let env: Vec<String> = serde_json::from_value(doc["env"].clone()).unwrap();

    assert_eq!(
        argv,
        strings_via_crit_json("python3", 13374, "mm_arg_start", "mm_arg_end")
    );
    assert_eq!(
        env,
        strings_via_crit_json("python3", 13374, "mm_env_start", "mm_env_end")
    );
    assert_eq!(argv[0], "/usr/bin/python3");
    assert_eq!(argv[1], "-c");
    assert!(argv[2].contains("hashlib.sha256"), "{argv:?}");
    assert!(env.contains(&"LANG=C".to_owned()), "{env:?}");

    let text = imgtool(&["mem", &set("python3"), "--cmdline"]);
    assert!(
        text.stdout.starts_with("/usr/bin/python3\n-c\n"),
        "{}",
        text.stdout
    );
}

#[test]
fn unknown_pid_and_bad_arguments_are_clear_errors() {
    let run = imgtool(&["mem", &set("counter"), "--pid", "1"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("no process 1 in"), "{}", run.stderr);
    assert!(run.stderr.contains("13131"), "{}", run.stderr);

    let run = imgtool(&["mem", &set("counter"), "--search-hex", "abc"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("even"), "{}", run.stderr);

    let run = imgtool(&["mem", &set("counter"), "--addr", "0xzz"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("not a number"), "{}", run.stderr);

    // A context larger than memory is clamped, not an overflow.
    let run = imgtool(&[
        "mem",
        &set("counter"),
        "--search",
        "/tmp/fx",
        "--context",
        &u64::MAX.to_string(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.ends_with("2 hit(s)\n"), "{}", run.stdout);
}

#[test]
fn pages_in_a_parent_are_shown_and_read_from_it() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, COUNTER); // the stack's 4 dumped pages
    let parent = set.tmp.path().join("predump");
    copy_dir(&fixture("counter"), &parent);
    std::os::unix::fs::symlink("../predump", set.path("parent")).unwrap();

    let rows = mem_json(&[set.dir_str()]);
    let stack = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["kind"] == "stack")
        .unwrap();
    assert_eq!(stack["in_parent"], 4);
    assert_eq!(stack["in_pages"], 0);
    assert_eq!(stack["resident"], 4);

    // argv lives on the stack: it is read through the parent.
    let doc = mem_json(&[set.dir_str(), "--cmdline"]);
    assert_eq!(doc["argv"][2], "/tmp/fx/counter.log");
}

#[test]
fn table_and_search_filter_by_address_range() {
    let range = format!("{:#x}-{:#x}", REGION + 0x1000, REGION + 0x2000);
    let rows = mem_json(&[&set("counter"), "--within", &range]);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(hex(&rows[0]["start"]), REGION);

    // The log path is on the stack, not in the region: nothing found there.
    let hits = mem_json(&[&set("counter"), "--within", &range, "--search", "/tmp/fx"]);
    assert_eq!(hits, serde_json::json!([]));

    let run = imgtool(&["mem", &set("counter"), "--within", "0x10"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("expected START-END"), "{}", run.stderr);
}
