//! `imgtool validate`: for each rule, a copy of a real CRIU set is broken in exactly that way,
//! and the report must name exactly that problem (rule, file, entry, field).

mod validate_common;

use std::fs::OpenOptions;
use std::os::unix::fs::symlink;

use cryo_format::magic::well_known;
use cryo_format::pagemap::{PE_PARENT, PE_PRESENT};
use cryo_format::schema::{CoreEntry, FdinfoEntry, FsEntry, InventoryEntry, MmEntry, PstreeEntry};
use validate_common::*;

const PID: u32 = 13131; // the counter set's process

fn assert_only(set: &SetCopy, expected: Found) {
    let (code, problems) = validate(&set.dir);
    assert_eq!(
        problems,
        vec![expected],
        "problems of {}",
        set.dir.display()
    );
    assert_eq!(code, Some(1), "an unsound set exits with 1");
}

#[test]
fn unknown_type_magic_is_a_header_problem() {
    let set = copy_set("counter");
    let path = set.path(&format!("core-{PID}.img"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert_only(&set, found("header", "core-13131.img", None, None));
}

#[test]
fn image_under_another_types_name_is_a_header_problem() {
    let set = copy_set("counter");
    std::fs::copy(set.path("fs-13131.img"), set.path("ids-13131.img")).unwrap();
    assert_only(&set, found("header", "ids-13131.img", None, None));
}

#[test]
fn truncated_entry_is_a_framing_problem() {
    let set = copy_set("counter");
    let file = OpenOptions::new()
        .write(true)
        .open(set.path("stats-dump"))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 3).unwrap();
    assert_only(&set, found("framing", "stats-dump", Some(0), None));
}

#[test]
fn missing_required_field_is_named() {
    let set = copy_set("counter");
    // fs_entry with cwd_id (field 1) = 9 and umask (field 3) = 18, but no root_id (field 2).
    write_raw(
        &set.path("fs-13131.img"),
        well_known::fs(),
        &[vec![0x08, 9, 0x18, 18]],
    );
    assert_only(
        &set,
        found("required", "fs-13131.img", Some(0), Some("root_id")),
    );
}

#[test]
fn malformed_protobuf_is_an_encoding_problem() {
    let set = copy_set("counter");
    // A varint whose continuation bit promises a byte that is not there.
    write_raw(
        &set.path("ids-13131.img"),
        well_known::ids(),
        &[vec![0x08, 0x80]],
    );
    assert_only(&set, found("encoding", "ids-13131.img", Some(0), None));
}

#[test]
fn process_without_mm_is_a_missing_image() {
    let set = copy_set("counter");
    std::fs::remove_file(set.path("mm-13131.img")).unwrap();
    assert_only(&set, found("missing-image", "mm-13131.img", None, None));
}

#[test]
fn thread_without_core_is_a_missing_image() {
    let set = copy_set("threads4");
    std::fs::remove_file(set.path("core-13181.img")).unwrap();
    assert_only(&set, found("missing-image", "core-13181.img", None, None));
}

#[test]
fn core_of_no_thread_is_reported() {
    let set = copy_set("threads4");
    std::fs::copy(set.path("core-13181.img"), set.path("core-4242.img")).unwrap();
    assert_only(&set, found("core", "core-4242.img", None, None));
}

#[test]
fn leader_core_without_task_core_is_reported() {
    let set = copy_set("counter");
    rewrite::<CoreEntry>(&set.path("core-13131.img"), well_known::core(), |cores| {
        cores[0].tc = None;
    });
    assert_only(&set, found("core", "core-13131.img", Some(0), Some("tc")));
}

#[test]
fn old_image_version_is_an_inventory_problem() {
    let set = copy_set("counter");
    rewrite::<InventoryEntry>(&set.path("inventory.img"), well_known::inventory(), |inv| {
        inv[0].img_version = 1;
    });
    assert_only(
        &set,
        found("inventory", "inventory.img", Some(0), Some("img_version")),
    );
}

#[test]
fn parent_outside_the_tree_is_a_pstree_problem() {
    let set = copy_set("pipe-tree");
    rewrite::<PstreeEntry>(&set.path("pstree.img"), well_known::pstree(), |tree| {
        tree[2].ppid = 99_999;
    });
    assert_only(&set, found("pstree", "pstree.img", Some(2), Some("ppid")));
}

#[test]
fn leader_not_listed_first_is_a_pstree_problem() {
    let set = copy_set("threads4");
    rewrite::<PstreeEntry>(&set.path("pstree.img"), well_known::pstree(), |tree| {
        tree[0].threads.swap(0, 1);
    });
    assert_only(
        &set,
        found("pstree", "pstree.img", Some(0), Some("threads")),
    );
}

#[test]
fn fdinfo_naming_an_unknown_file_is_reported() {
    let set = copy_set("counter");
    rewrite::<FdinfoEntry>(&set.path("fdinfo-2.img"), well_known::fdinfo(), |fds| {
        fds[5].id = 999;
    });
    assert_only(&set, found("file-ref", "fdinfo-2.img", Some(5), Some("id")));
}

#[test]
fn cwd_naming_an_unknown_file_is_reported() {
    let set = copy_set("counter");
    rewrite::<FsEntry>(&set.path("fs-13131.img"), well_known::fs(), |fs| {
        fs[0].cwd_id = 999;
    });
    assert_only(
        &set,
        found("file-ref", "fs-13131.img", Some(0), Some("cwd_id")),
    );
}

#[test]
fn vmas_out_of_order_are_reported() {
    let set = copy_set("counter");
    rewrite::<MmEntry>(&set.path("mm-13131.img"), well_known::mm(), |mm| {
        mm[0].vmas.swap(6, 7);
    });
    assert_only(
        &set,
        found("vma", "mm-13131.img", Some(0), Some("vmas[7].start")),
    );
}

#[test]
fn pages_both_present_and_in_parent_are_reported() {
    let set = copy_set("counter");
    let path = set.path("pagemap-13131.img");
    let (head, mut entries) = read_pagemap(&path);
    entries[13].flags = Some(PE_PRESENT | PE_PARENT); // entry 14 of the file (0 is the head)
    write_pagemap(&path, &head, &entries);
    assert_only(
        &set,
        found("pagemap", "pagemap-13131.img", Some(14), Some("flags")),
    );
}

#[test]
fn pagemap_range_outside_every_vma_is_reported() {
    let set = copy_set("counter");
    // VMA 7 (0x7f505cf50000-0x7f505cf53000) holds pagemap entry 13 alone.
    rewrite::<MmEntry>(&set.path("mm-13131.img"), well_known::mm(), |mm| {
        let removed = mm[0].vmas.remove(7);
        assert_eq!(removed.start, 0x7f50_5cf5_0000);
    });
    assert_only(
        &set,
        found(
            "pagemap-outside-vma",
            "pagemap-13131.img",
            Some(13),
            Some("vaddr"),
        ),
    );
}

#[test]
fn pages_image_longer_than_its_pagemap_is_reported() {
    let set = copy_set("counter");
    let mut bytes = std::fs::read(set.path("pages-1.img")).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(set.path("pages-1.img"), bytes).unwrap();
    assert_only(&set, found("pages-size", "pages-1.img", None, None));
}

#[test]
fn dangling_parent_link_is_reported() {
    let set = copy_set("counter");
    symlink("../no-such-predump", set.path("parent")).unwrap();
    assert_only(&set, found("parent", "parent", None, None));
}

#[test]
fn parent_link_to_itself_is_a_loop() {
    let set = copy_set("counter");
    symlink(".", set.path("parent")).unwrap();
    assert_only(&set, found("parent", "parent", None, None));
}

#[test]
fn parent_hole_without_a_parent_is_reported() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, PID);
    assert_only(
        &set,
        found("parent", "pagemap-13131.img", Some(21), Some("flags")),
    );
}

#[test]
fn parent_hole_resolved_by_the_parent_is_sound() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, PID);
    let parent = set.tmp.path().join("predump");
    copy_dir(&fixture("counter"), &parent);
    symlink("../predump", set.path("parent")).unwrap();

    let (code, problems) = validate(&set.dir);
    assert_eq!(problems, vec![]);
    assert_eq!(code, Some(0));
}

#[test]
fn parent_hole_the_parent_lacks_is_reported() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, PID);
    let parent = set.tmp.path().join("predump");
    copy_dir(&fixture("counter"), &parent);
    let (head, mut entries) = read_pagemap(&parent.join("pagemap-13131.img"));
    let dropped = entries.pop().unwrap().nr_pages.unwrap();
    write_pagemap(&parent.join("pagemap-13131.img"), &head, &entries);
    let file = OpenOptions::new()
        .write(true)
        .open(parent.join("pages-1.img"))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - dropped * 4096).unwrap();
    symlink("../predump", set.path("parent")).unwrap();

    assert_only(
        &set,
        found("parent", "pagemap-13131.img", Some(21), Some("flags")),
    );
}

#[test]
fn every_problem_is_listed_with_file_entry_and_field_in_text() {
    let set = copy_set("counter");
    rewrite::<FdinfoEntry>(&set.path("fdinfo-2.img"), well_known::fdinfo(), |fds| {
        fds[5].id = 999;
    });
    rewrite::<FsEntry>(&set.path("fs-13131.img"), well_known::fs(), |fs| {
        fs[0].root_id = 998;
    });
    std::fs::remove_file(set.path("core-13131.img")).unwrap();

    let (_, problems) = validate(&set.dir);
    assert_eq!(problems.len(), 3, "{problems:?}");

    let run = imgtool(&["validate", set.dir_str()]);
    assert_eq!(run.code, Some(1));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.contains(
            &"fdinfo-2.img: entry 5: field id: file id 999 is not in files.img [file-ref]"
        ),
        "{}",
        run.stdout
    );
    assert!(
        lines.contains(
            &"fs-13131.img: entry 0: field root_id: file id 998 is not in files.img [file-ref]"
        ),
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("core-13131.img: ") && line.ends_with("[missing-image]"))
    );
    assert!(run.stderr.contains("3 problem(s) found"), "{}", run.stderr);
}

#[test]
fn parent_pages_image_shorter_than_its_pagemap_is_reported() {
    let set = copy_set("counter");
    make_last_entry_a_parent_hole(&set, PID);
    let parent = set.tmp.path().join("predump");
    copy_dir(&fixture("counter"), &parent);
    let file = OpenOptions::new()
        .write(true)
        .open(parent.join("pages-1.img"))
        .unwrap();
    file.set_len(4096).unwrap();
    symlink("../predump", set.path("parent")).unwrap();

    assert_only(&set, found("parent", "parent/pages-1.img", None, None));
}

#[test]
fn pipe_data_of_no_open_pipe_is_reported() {
    let set = copy_set("pipe-tree");
    rewrite::<cryo_format::schema::PipeDataEntry>(
        &set.path("pipes-data.img"),
        well_known::pipes_data(),
        |entries| entries[0].pipe_id = 4242,
    );
    assert_only(
        &set,
        found("file-ref", "pipes-data.img", Some(0), Some("pipe_id")),
    );
}

#[test]
fn seccomp_filter_index_past_the_filters_is_reported() {
    let set = copy_set("counter");
    rewrite::<CoreEntry>(&set.path("core-13131.img"), well_known::core(), |cores| {
        let thread = cores[0].thread_core.as_mut().unwrap();
        thread.seccomp_mode = Some(2);
        thread.seccomp_filter = Some(3);
    });
    assert_only(
        &set,
        found(
            "file-ref",
            "core-13131.img",
            Some(0),
            Some("thread_core.seccomp_filter"),
        ),
    );
}
