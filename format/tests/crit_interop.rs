//! Images written by cryo are read by CRIU's own `crit` (Debian's 3.17 on this machine).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryo_format::pagemap::PE_PARENT;
use cryo_format::schema::{InventoryEntry, PipeDataEntry, PstreeEntry};
use cryo_format::{ImageSet, PagemapId};

const CRIT: &str = "/usr/bin/crit";

/// Runs `crit decode -i PATH` with a time bound and parses its JSON.
fn crit_decode(path: &Path) -> serde_json::Value {
    let out_path = path.with_extension("json");
    let mut child = Command::new(CRIT)
        .arg("decode")
        .arg("-i")
        .arg(path)
        .arg("-o")
        .arg(&out_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("crit starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for crit") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crit decode {} timed out", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "crit decode {} failed", path.display());
    let text = std::fs::read_to_string(&out_path).expect("crit wrote its output");
    serde_json::from_str(&text).expect("crit writes JSON")
}

#[test]
fn crit_decodes_images_written_by_cryo() {
    if !Path::new(CRIT).exists() {
        println!("skipped: {CRIT} is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = ImageSet::create(dir.path()).unwrap();
    out.write_pstree(&[PstreeEntry {
        pid: 77,
        ppid: 0,
        pgid: 77,
        sid: 1,
        threads: vec![77, 78],
    }])
    .unwrap();
    let pipe = PipeDataEntry {
        pipe_id: 5,
        bytes: 5,
        size: Some(65536),
    };
    out.write_pipes_data(&[(pipe, &b"hello"[..])]).unwrap();
    let mut pages = out.pages(PagemapId::Pid(77), 1).unwrap();
    pages.add_pages(0x10000, &[0xab; 8192], true).unwrap();
    pages.add_hole(0x20000, 3, PE_PARENT).unwrap();
    pages.finish().unwrap();
    out.finish(&InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        ..Default::default()
    })
    .unwrap();

    let inv = crit_decode(&dir.path().join("inventory.img"));
    assert_eq!(inv["magic"], "INVENTORY");
    assert_eq!(inv["entries"][0]["img_version"], 2);

    let tree = crit_decode(&dir.path().join("pstree.img"));
    assert_eq!(tree["entries"][0]["pid"], 77);
    assert_eq!(tree["entries"][0]["threads"], serde_json::json!([77, 78]));

    let pipes = crit_decode(&dir.path().join("pipes-data.img"));
    assert_eq!(pipes["entries"][0]["bytes"], 5);
    assert_eq!(pipes["entries"][0]["extra"], "aGVsbG8=\n"); // base64 of "hello"

    // crit 3.17 predates field 5 (`nr_pages`) and shows only field 2, which CRIU 4.2 sets
    // to 0; the entries, addresses and flags must still come through.
    let pagemap = crit_decode(&dir.path().join("pagemap-77.img"));
    let entries = pagemap["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["pages_id"], 1);
    assert_eq!(entries[1]["vaddr"], 0x10000);
    assert_eq!(entries[1]["flags"], 6); // PE_LAZY | PE_PRESENT
    assert_eq!(entries[2]["flags"], 1); // PE_PARENT
}

#[test]
fn crit_before_4_2_sees_page_counts_of_compat_pagemaps() {
    if !Path::new(CRIT).exists() {
        println!("skipped: {CRIT} is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Field 2 is written by default.
    let mut pages = cryo_format::PagesWriter::create(dir.path(), PagemapId::Pid(9), 1).unwrap();
    pages.add_pages(0x10000, &[1; 3 * 4096], false).unwrap();
    pages.finish().unwrap();

    let pagemap = crit_decode(&dir.path().join("pagemap-9.img"));
    assert_eq!(pagemap["entries"][1]["nr_pages"], 3); // crit 3.17's name for field 2
    let ours = cryo_format::Pagemap::open(dir.path().join("pagemap-9.img")).unwrap();
    assert_eq!(ours.runs()[0].nr_pages, 3);
}
