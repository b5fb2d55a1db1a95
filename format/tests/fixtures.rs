//! Reading the real CRIU 4.2 image sets in `fixtures/criu-images/`.

use std::fs;
use std::path::{Path, PathBuf};

use cryo_format::memory::Source;
use cryo_format::pagemap::{PE_LAZY, PE_PRESENT};
use cryo_format::schema::{MmEntry, VmaEntry};
use cryo_format::{ImageFile, ImageSet, ImageWriter, MemoryView, PAGE_SIZE};

const SETS: &[&str] = &[
    "counter",
    "threads4",
    "pipe-tree",
    "python3",
    "series-t0",
    "series-t1",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images")
}

fn image_files(set: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(fixtures().join(set))
        .expect("fixture set exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with("pages-")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{set} has its images");
    files
}

fn crit_json(set: &str, image: &Path) -> serde_json::Value {
    let name = image.file_name().unwrap().to_string_lossy();
    let path = fixtures().join(format!("{set}-json/{name}.json"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("crit wrote valid JSON")
}

#[test]
fn every_fixture_image_opens_and_its_entry_count_and_magic_match_crit() {
    let mut checked = 0;
    for set in SETS {
        for path in image_files(set) {
            let image = ImageFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let json = crit_json(set, &path);
            assert_eq!(
                json["magic"].as_str(),
                Some(image.magic().name),
                "{}",
                path.display()
            );
            let mut count = 0;
            for entry in image.entries() {
                let entry = entry.unwrap_or_else(|e| panic!("{e}"));
                image.check(&entry).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
            let expected = json["entries"].as_array().expect("entries array").len();
            assert_eq!(count, expected, "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 60, "checked {checked} images");
}

#[test]
fn pipe_data_extra_matches_crit_and_its_bytes_field() {
    let set = ImageSet::open(fixtures().join("pipe-tree")).expect("set opens");
    let pipes = set.pipes_data().expect("pipes-data decodes");
    let json = crit_json("pipe-tree", &set.path("pipes-data.img"));
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(pipes.len(), entries.len());
    for ((entry, data), j) in pipes.iter().zip(entries) {
        assert_eq!(u64::from(entry.pipe_id), j["pipe_id"].as_u64().unwrap());
        assert_eq!(data.len(), entry.bytes as usize);
    }
}

#[test]
fn every_raw_entry_rewrites_byte_identical() {
    let out = tempfile::tempdir().expect("temp dir");
    for set in SETS {
        for path in image_files(set) {
            let image = ImageFile::open(&path).expect("opens");
            let copy = out.path().join(path.file_name().unwrap());
            let mut w = ImageWriter::create(&copy, image.magic()).expect("create");
            for entry in image.entries() {
                let entry = entry.expect("frames");
                w.write_entry(&entry).expect("write");
            }
            w.finish().expect("finish");
            assert_eq!(
                fs::read(&copy).unwrap(),
                fs::read(&path).unwrap(),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn typed_decode_then_encode_is_byte_identical_for_task_images() {
    use prost::Message;
    for set in SETS {
        let images = ImageSet::open(fixtures().join(set)).expect("set opens");
        for task in images.pstree().expect("pstree") {
            let pid = task.pid;
            let check = |name: String, encoded: Vec<u8>| {
                let image = ImageFile::open(images.path(&name)).expect("opens");
                let entry = image.entries().next().unwrap().unwrap();
                assert_eq!(encoded, entry.payload, "{set}/{name}");
            };
            check(
                format!("mm-{pid}.img"),
                images.mm(pid).unwrap().encode_to_vec(),
            );
            check(
                format!("ids-{pid}.img"),
                images.ids(pid).unwrap().encode_to_vec(),
            );
            check(
                format!("fs-{pid}.img"),
                images.fs(pid).unwrap().encode_to_vec(),
            );
            for tid in &task.threads {
                let core = images.core(*tid).unwrap();
                check(format!("core-{tid}.img"), core.encode_to_vec());
            }
        }
    }
}

#[test]
fn image_sets_decode_through_typed_accessors() {
    for set in SETS {
        let images = ImageSet::open(fixtures().join(set)).expect("set opens");
        assert_eq!(images.inventory().img_version, 2);
        let tree = images.pstree().expect("pstree");
        assert!(!tree.is_empty());
        assert_eq!(images.root().unwrap().ppid, 0);
        let files = images.files().expect("files");
        let timens: cryo_format::schema::TimensEntry = images
            .entry("timens-0.img", cryo_format::magic::well_known::timens())
            .expect("timens");
        assert!(timens.monotonic.tv_sec != 0 || timens.boottime.tv_sec != 0);
        let ttys: Vec<cryo_format::schema::TtyInfoEntry> = images
            .entries("tty-info.img", cryo_format::magic::well_known::tty_info())
            .expect("absent tty-info reads as empty");
        assert!(ttys.is_empty());
        assert!(!files.is_empty(), "{set}");
        for task in &tree {
            let ids = images.ids(task.pid).expect("ids");
            let fds = images.fdinfo(ids.files_id).expect("fdinfo");
            assert!(!fds.is_empty(), "{set} pid {}", task.pid);
            for fd in &fds {
                assert!(
                    files.iter().any(|f| f.id == fd.id),
                    "fd {} has a file",
                    fd.fd
                );
            }
            let pagemap = images.pagemap(task.pid).expect("pagemap");
            assert!(pagemap.present_pages() > 0);
            let view = images.memory(task.pid).expect("memory view");
            let resolved = view.resolved_runs().expect("resolves");
            let present: u64 = resolved
                .iter()
                .filter(|s| matches!(s.source, Source::Data { .. }))
                .map(|s| s.len)
                .sum();
            assert_eq!(present, pagemap.present_pages() * PAGE_SIZE);
        }
    }
}

/// The workload's pattern region: an anonymous private VMA of `mib` MiB whose first word is
/// the pattern's word 0 (thread stacks have the same size and flags).
fn pattern_vma<'m>(mm: &'m MmEntry, view: &MemoryView, mib: u64) -> &'m VmaEntry {
    const MAP_PRIVATE: u32 = 0x02;
    const MAP_ANONYMOUS: u32 = 0x20;
    mm.vmas
        .iter()
        .filter(|v| v.end - v.start == mib << 20 && v.flags == MAP_PRIVATE | MAP_ANONYMOUS)
        .find(|v| view.read_u64(v.start).ok() == Some(0xC0DE_0000_0000_0000))
        .expect("the workload's pattern region is one anonymous private VMA")
}

fn check_pattern(set: &str, mib: u64) {
    let images = ImageSet::open(fixtures().join(set)).expect("set opens");
    let pid = images.root().unwrap().pid;
    let mm = images.mm(pid).unwrap();
    let view = images.memory(pid).unwrap();
    let vma = pattern_vma(&mm, &view, mib);

    let words = (vma.end - vma.start) / 8;
    let samples = (0..words).step_by(4099).chain([0, 1, 511, 512, words - 1]);
    for i in samples {
        let got = view.read_u64(vma.start + 8 * i).unwrap();
        assert_eq!(got, 0xC0DE_0000_0000_0000 | i, "{set}: word {i}");
    }

    // Zero-copy: a whole-VMA lookup hands out slices of the mapped pages image.
    let segments = view.segments(vma.start, vma.end - vma.start).unwrap();
    let mut i = 0u64;
    for seg in &segments {
        let Source::Data { bytes, depth: 0 } = seg.source else {
            panic!("{set}: {:#x} is not present", seg.vaddr);
        };
        for word in bytes.chunks_exact(8) {
            let w = u64::from_le_bytes(word.try_into().unwrap());
            assert_eq!(w, 0xC0DE_0000_0000_0000 | i);
            i += 1;
        }
    }
    assert_eq!(i, words);
    let run = view.pagemap().find(vma.start).unwrap();
    assert_eq!(run.flags, PE_LAZY | PE_PRESENT);
}

#[test]
fn counter_pattern_word_i_is_c0de_or_i() {
    check_pattern("counter", 8);
}

#[test]
fn threads4_and_series_patterns_are_intact() {
    check_pattern("threads4", 8);
    check_pattern("series-t0", 16);
    check_pattern("series-t1", 16);
}

#[test]
fn addresses_outside_every_run_are_absent() {
    let images = ImageSet::open(fixtures().join("counter")).unwrap();
    let view = images.memory(images.root().unwrap().pid).unwrap();
    assert_eq!(view.page(0x1000).unwrap(), Source::Absent);
    let err = view.read_u64(0x1000).unwrap_err();
    assert!(matches!(
        err,
        cryo_format::MemoryError::NotReadable { what: "no run", .. }
    ));
}

/// Decodes `payload` as the prost struct of `message` and encodes it again.
fn reencode(message: &str, payload: &[u8]) -> Option<Vec<u8>> {
    use prost::Message;
    cryo_format::with_message_type!(message, T => Some(T::decode(payload).expect("decodes").encode_to_vec()), else None)
}

#[test]
fn every_fixture_entry_reencodes_byte_identical_through_its_prost_struct() {
    let mut checked = 0;
    for set in SETS {
        for path in image_files(set) {
            let image = ImageFile::open(&path).unwrap();
            for entry in image.entries() {
                let entry = entry.unwrap();
                let message = entry.message.unwrap();
                let encoded = reencode(message, entry.payload)
                    .unwrap_or_else(|| panic!("{}: no struct for {message}", path.display()));
                assert_eq!(
                    encoded,
                    entry.payload,
                    "{} entry {}",
                    path.display(),
                    entry.index
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "checked {checked} entries");
}
