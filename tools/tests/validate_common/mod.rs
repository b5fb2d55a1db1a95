//! Shared helpers of the diff/validate/mem tests: running imgtool bounded in time, copying
//! fixture sets into temp dirs, and rewriting images of a copy with cryo-format.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryo_format::magic::Magic;
use cryo_format::schema::{PagemapEntry, PagemapHead};
use cryo_format::{ImageFile, ImageWriter, magic::well_known};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Output of one imgtool run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }
}

/// Runs imgtool with `args`, killing it after `TIMEOUT`.
pub fn imgtool(args: &[&str]) -> Run {
    let out = tempfile::tempdir().expect("temp dir for output");
    let stdout_path = out.path().join("stdout");
    let stderr_path = out.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("imgtool starts");

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for imgtool") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imgtool {args:?} ran longer than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&stdout_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&stderr_path).expect("read stderr"),
    }
}

/// `fixtures/criu-images/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/criu-images")
        .join(name)
}

/// Every CRIU image set of the fixtures (directories with a `NAME-json` sibling).
pub fn fixture_sets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures/criu-images is readable")
        .map(|item| item.expect("dir entry").path())
        .filter(|path| {
            let mut json = path.file_name().unwrap().to_os_string();
            json.push("-json");
            path.with_file_name(json).is_dir()
        })
        .collect();
    sets.sort();
    assert!(
        sets.len() >= 6,
        "fixture sets missing in {}",
        root.display()
    );
    sets
}

/// A temp dir holding a copy of fixture set `name` in `set/`.
pub struct SetCopy {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl SetCopy {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 temp path")
    }
}

pub fn copy_set(name: &str) -> SetCopy {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("set");
    copy_dir(&fixture(name), &dir);
    SetCopy { tmp, dir }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for item in std::fs::read_dir(from).expect("read fixture dir") {
        let item = item.expect("dir entry");
        if item.file_type().expect("file type").is_file() {
            std::fs::copy(item.path(), to.join(item.file_name())).expect("copy image");
        }
    }
}

/// Rewrites a uniform image (every entry of type `M`) after `change`.
pub fn rewrite<M: prost::Message + Default>(
    path: &Path,
    magic: &'static Magic,
    change: impl FnOnce(&mut Vec<M>),
) {
    let mut entries: Vec<M> = ImageFile::open_expect(path, magic)
        .expect("open image")
        .decode_all()
        .expect("decode image");
    change(&mut entries);
    let mut writer = ImageWriter::create(path, magic).expect("create image");
    for entry in &entries {
        writer.write(entry).expect("write entry");
    }
    writer.finish().expect("finish image");
}

/// Rewrites an image whose entries are given as raw message payloads.
pub fn write_raw(path: &Path, magic: &'static Magic, payloads: &[Vec<u8>]) {
    let mut writer = ImageWriter::create(path, magic).expect("create image");
    for payload in payloads {
        writer.write_raw(payload, &[]).expect("write raw entry");
    }
    writer.finish().expect("finish image");
}

/// Decodes a pagemap image into its head and entries.
pub fn read_pagemap(path: &Path) -> (PagemapHead, Vec<PagemapEntry>) {
    let image = ImageFile::open_expect(path, well_known::pagemap()).expect("open pagemap");
    let mut entries = image.entries();
    let head = image
        .decode(&entries.next().expect("head").expect("framed head"))
        .expect("decode head");
    let rest = entries
        .map(|entry| image.decode(&entry.expect("framed")).expect("decode entry"))
        .collect();
    (head, rest)
}

/// Writes a pagemap image.
pub fn write_pagemap(path: &Path, head: &PagemapHead, entries: &[PagemapEntry]) {
    let mut writer = ImageWriter::create(path, well_known::pagemap()).expect("create pagemap");
    writer.write(head).expect("write head");
    for entry in entries {
        writer.write(entry).expect("write entry");
    }
    writer.finish().expect("finish pagemap");
}

/// A problem as (rule, file, entry, field).
pub type Found = (String, String, Option<u64>, Option<String>);

/// Runs `imgtool validate --json DIR`; returns the exit code and the problems.
pub fn validate(dir: &Path) -> (Option<i32>, Vec<Found>) {
    let run = imgtool(&["validate", "--json", dir.to_str().expect("utf-8 path")]);
    let report = run.json();
    let problems = report["problems"]
        .as_array()
        .expect("problems array")
        .iter()
        .map(|problem| {
            (
                problem["rule"].as_str().expect("rule").to_owned(),
                problem["file"].as_str().expect("file").to_owned(),
                problem["entry"].as_u64(),
                problem["field"].as_str().map(str::to_owned),
            )
        })
        .collect();
    (run.code, problems)
}

/// Builds an expected problem.
pub fn found(rule: &str, file: &str, entry: Option<u64>, field: Option<&str>) -> Found {
    (
        rule.to_owned(),
        file.to_owned(),
        entry,
        field.map(str::to_owned),
    )
}

/// Turns the last pagemap entry of `pagemap-PID.img` into a `PE_PARENT` hole and cuts its
/// pages off the end of the pages image, as an incremental dump over a parent writes it.
pub fn make_last_entry_a_parent_hole(set: &SetCopy, pid: u32) {
    let path = set.path(&format!("pagemap-{pid}.img"));
    let (head, mut entries) = read_pagemap(&path);
    let last = entries.last_mut().expect("pagemap has entries");
    let pages = last.nr_pages.expect("CRIU 4.2 writes nr_pages");
    last.flags = Some(cryo_format::pagemap::PE_PARENT);
    write_pagemap(&path, &head, &entries);

    let pages_path = set.path(&format!("pages-{}.img", head.pages_id));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(pages_path)
        .expect("open pages image");
    let len = file.metadata().expect("pages metadata").len();
    file.set_len(len - pages * 4096)
        .expect("truncate pages image");
}

fn hex_value(value: &Value) -> u64 {
    match value {
        Value::String(text) => u64::from_str_radix(text.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("not hex: {text}")),
        Value::Number(number) => number.as_u64().expect("u64"),
        other => panic!("not a number: {other}"),
    }
}

/// Reads `len` bytes at `vaddr` of process `pid` without imgtool: addresses from crit's JSON
/// of the pagemap (`NAME-json/`), bytes from `pages-N.img`, walking present entries in order.
pub fn read_via_crit_json(name: &str, pid: u32, vaddr: u64, len: usize) -> Vec<u8> {
    let json_path = fixture(&format!("{name}-json")).join(format!("pagemap-{pid}.img.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    let pages_id = entries[0]["pages_id"].as_u64().unwrap();
    let pages = std::fs::read(fixture(name).join(format!("pages-{pages_id}.img"))).unwrap();

    let mut out = Vec::with_capacity(len);
    let mut offset = 0u64;
    for entry in &entries[1..] {
        let start = hex_value(&entry["vaddr"]);
        let nr = entry["nr_pages"].as_u64().unwrap();
        let end = start + nr * 4096;
        assert!(entry["flags"].as_str().unwrap().contains("PE_PRESENT"));
        let want = vaddr + out.len() as u64;
        if out.len() < len && want >= start && want < end {
            let take = ((end - want) as usize).min(len - out.len());
            let at = (offset + want - start) as usize;
            out.extend_from_slice(&pages[at..at + take]);
        }
        offset += nr * 4096;
    }
    assert_eq!(
        out.len(),
        len,
        "{len} bytes at {vaddr:#x} are not all dumped"
    );
    out
}

/// A field of a single-entry image, from crit's JSON (`NAME-json/FILE.json`).
pub fn crit_field(name: &str, file: &str, field: &str) -> u64 {
    let json_path = fixture(&format!("{name}-json")).join(format!("{file}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    hex_value(&doc["entries"][0][field])
}

/// Parses a `0x…` string of imgtool's JSON.
pub fn hex(value: &Value) -> u64 {
    hex_value(value)
}
