//! Pre-dump parent chains, built by hand with `PagesWriter` in temp dirs.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cryo_format::pagemap::{PE_LAZY, PE_PARENT, PE_PRESENT};
use cryo_format::{
    ImageSet, MemoryError, MemoryView, PAGE_SIZE, PagemapId, PagesWriteError, PagesWriter, Source,
};

const PID: PagemapId = PagemapId::Pid(42);

/// A page filled with `tag`.
fn page(tag: u8) -> Vec<u8> {
    vec![tag; PAGE_SIZE as usize]
}

enum Run {
    Data(u64, Vec<u8>),
    Hole(u64, u64, u32),
}

fn layer(dir: &Path, parent: Option<&str>, runs: &[Run]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    if let Some(p) = parent {
        symlink(p, dir.join("parent")).unwrap();
    }
    let mut w = PagesWriter::create(dir, PID, 1).unwrap();
    for run in runs {
        match run {
            Run::Data(vaddr, data) => w.add_pages(*vaddr, data, false).unwrap(),
            Run::Hole(vaddr, n, flags) => w.add_hole(*vaddr, *n, *flags).unwrap(),
        }
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

fn two_level_chain(root: &Path) -> PathBuf {
    let a: Vec<u8> = (0..4).flat_map(|i| page(0xa0 + i)).collect();
    layer(
        &root.join("t0"),
        None,
        &[Run::Data(0x10000, a), Run::Data(0x20000, page(0xc0))],
    );
    layer(
        &root.join("t1"),
        Some("../t0"),
        &[
            Run::Hole(0x10000, 1, PE_PARENT),
            Run::Data(0x11000, page(0xb1)),
            Run::Hole(0x12000, 2, PE_PARENT),
            Run::Hole(0x20000, 1, PE_LAZY),
            Run::Data(0x30000, page(0xb3)),
        ],
    );
    layer(
        &root.join("t2"),
        Some("../t1"),
        &[
            Run::Hole(0x10000, 4, PE_PARENT),
            Run::Hole(0x20000, 1, PE_PARENT),
            Run::Hole(0x30000, 1, PE_PARENT),
        ],
    )
}

fn data_tag(source: Source<'_>) -> (u8, usize) {
    match source {
        Source::Data { bytes, depth } => (bytes[0], depth),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn lookups_follow_the_parent_chain_to_the_layer_holding_each_page() {
    let root = tempfile::tempdir().unwrap();
    let top = two_level_chain(root.path());
    let view = MemoryView::open(&top, PID).unwrap();
    assert_eq!(view.depth(), 3);

    assert_eq!(data_tag(view.page(0x10000).unwrap()), (0xa0, 2));
    assert_eq!(data_tag(view.page(0x11abc).unwrap()), (0xb1, 1));
    assert_eq!(data_tag(view.page(0x13000).unwrap()), (0xa3, 2));
    assert_eq!(data_tag(view.page(0x30000).unwrap()), (0xb3, 1));
    assert_eq!(view.page(0x20000).unwrap(), Source::Lazy);
    assert_eq!(view.page(0x40000).unwrap(), Source::Absent);

    let segs = view.segments(0x10800, 0x3000).unwrap();
    let shape: Vec<_> = segs.iter().map(|s| (s.vaddr, s.len)).collect();
    assert_eq!(
        shape,
        [(0x10800, 0x800), (0x11000, 0x1000), (0x12000, 0x1800)]
    );
    assert_eq!(data_tag(segs[2].source), (0xa2, 2));
    let Source::Data { bytes, depth } = segs[2].source else {
        unreachable!()
    };
    let (file, offset) = view.file_offset(depth, bytes).unwrap();
    assert!(file.ends_with("t0/pages-1.img"), "{}", file.display());
    assert_eq!(offset, 2 * PAGE_SIZE); // 0x12000 is the third page of t0's first run
    assert!(
        view.file_offset(0, bytes).is_none(),
        "t2 has no pages image"
    );

    let mut buf = [0u8; 16];
    view.read(0x11ff8, &mut buf).unwrap();
    assert_eq!(
        buf,
        [
            0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xa2, 0xa2, 0xa2, 0xa2, 0xa2, 0xa2,
            0xa2, 0xa2
        ]
    );
    let present: u64 = view
        .resolved_runs()
        .unwrap()
        .iter()
        .filter(|s| matches!(s.source, Source::Data { .. }))
        .map(|s| s.len)
        .sum();
    assert_eq!(present, 5 * PAGE_SIZE);
}

#[test]
fn a_parent_chain_that_loops_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let holes = [Run::Hole(0x1000, 1, PE_PARENT)];
    layer(&root.path().join("a"), Some("../b"), &holes);
    layer(&root.path().join("b"), Some("../a"), &holes);
    let err = MemoryView::open(root.path().join("a"), PID).unwrap_err();
    assert!(matches!(err, MemoryError::ParentCycle { .. }), "{err}");
}

#[test]
fn a_chain_deeper_than_the_limit_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let depth = cryo_format::memory::MAX_PARENT_DEPTH + 2;
    for i in 0..depth {
        let parent = format!("../l{}", i + 1);
        layer(
            &root.path().join(format!("l{i}")),
            Some(&parent),
            &[Run::Hole(0x1000, 1, PE_PARENT)],
        );
    }
    layer(
        &root.path().join(format!("l{depth}")),
        None,
        &[Run::Data(0x1000, page(1))],
    );
    let err = MemoryView::open(root.path().join("l0"), PID).unwrap_err();
    assert!(matches!(err, MemoryError::ParentTooDeep { .. }), "{err}");
}

#[test]
fn missing_parents_and_pages_missing_in_the_parent_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let orphan = layer(
        &root.path().join("orphan"),
        None,
        &[Run::Hole(0x1000, 1, PE_PARENT)],
    );
    let err = MemoryView::open(&orphan, PID).unwrap_err();
    assert!(matches!(err, MemoryError::MissingParent { .. }), "{err}");

    layer(&root.path().join("p"), None, &[Run::Data(0x1000, page(1))]);
    let child = layer(
        &root.path().join("c"),
        Some("../p"),
        &[Run::Hole(0x1000, 2, PE_PARENT)],
    );
    let view = MemoryView::open(&child, PID).unwrap();
    assert_eq!(data_tag(view.page(0x1000).unwrap()), (1, 1));
    let err = view.page(0x2000).unwrap_err();
    assert!(
        matches!(err, MemoryError::ParentLacksPage { vaddr: 0x2000, .. }),
        "{err}"
    );
}

#[test]
fn a_pages_image_shorter_than_its_pagemap_is_refused_at_open() {
    let root = tempfile::tempdir().unwrap();
    let two: Vec<u8> = [page(1), page(2)].concat();
    let dir = layer(
        &root.path().join("d"),
        None,
        &[Run::Data(0x1000, page(0)), Run::Data(0x8000, two)],
    );
    let pages = dir.join("pages-1.img");
    let f = fs::OpenOptions::new().write(true).open(&pages).unwrap();
    f.set_len(2 * PAGE_SIZE).unwrap();
    let err = MemoryView::open(&dir, PID).unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::PagesTooShort {
                index: 2,
                needed: 12288,
                size: 8192,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn pages_writer_merges_adjacent_runs_and_rejects_disorder() {
    let root = tempfile::tempdir().unwrap();
    let mut w = PagesWriter::create(root.path(), PID, 3).unwrap();
    w.add_pages(0x1000, &page(1), true).unwrap();
    w.add_pages(0x2000, &page(2), true).unwrap();
    w.add_pages(0x3000, &page(3), false).unwrap();
    let err = w.add_pages(0x2000, &page(4), false).unwrap_err();
    assert!(matches!(
        err,
        PagesWriteError::OutOfOrder {
            vaddr: 0x2000,
            prev_end: 0x4000
        }
    ));
    assert!(matches!(
        w.add_pages(0x5000, &[0; 100], false),
        Err(PagesWriteError::PartialPage { len: 100, .. })
    ));
    assert!(matches!(
        w.add_hole(0x9000, 1, PE_PRESENT),
        Err(PagesWriteError::BadHoleFlags { .. })
    ));
    let summary = w.finish().unwrap();
    assert_eq!((summary.entries, summary.present_pages), (2, 3));

    let view = MemoryView::open(root.path(), PID).unwrap();
    let runs = view.pagemap().runs();
    assert_eq!(runs[0].flags, PE_LAZY | PE_PRESENT);
    assert_eq!(runs[0].nr_pages, 2);
    assert_eq!(view.pagemap().pages_id(), 3);
    assert_eq!(data_tag(view.page(0x3000).unwrap()), (3, 0));
}

#[test]
fn pages_writer_reexports_a_real_dump_with_identical_memory() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images/counter");
    let set = ImageSet::open(&fixture).unwrap();
    let pid = set.root().unwrap().pid;
    let original = set.memory(pid).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut w = PagesWriter::create(out.path(), PagemapId::Pid(pid), 1).unwrap();
    for run in original.pagemap().runs() {
        let mut source = original.segments(run.vaddr, run.len_bytes()).unwrap();
        let Source::Data { bytes, .. } = source.remove(0).source else {
            panic!("fixture runs are present");
        };
        w.add_pages_from(run.vaddr, run.nr_pages, run.is_lazy(), &mut &bytes[..])
            .unwrap();
    }
    w.finish().unwrap();

    let copy = MemoryView::open(out.path(), PagemapId::Pid(pid)).unwrap();
    assert_eq!(
        copy.pagemap().present_pages(),
        original.pagemap().present_pages()
    );
    assert_eq!(
        fs::read(out.path().join("pages-1.img")).unwrap(),
        fs::read(fixture.join("pages-1.img")).unwrap()
    );
}

#[test]
fn a_predump_series_written_with_image_set_writers_reads_through_its_parent() {
    use cryo_format::schema::InventoryEntry;
    let root = tempfile::tempdir().unwrap();
    let inventory = InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        ..Default::default()
    };

    let first = ImageSet::create(root.path().join("r1")).unwrap();
    let mut pages = first.pages(PID, 1).unwrap();
    pages
        .add_pages(0x1000, &[page(1), page(2)].concat(), true)
        .unwrap();
    pages.finish().unwrap();
    first.finish(&inventory).unwrap();

    let second = ImageSet::create(root.path().join("r2")).unwrap();
    second.link_parent("../r1").unwrap();
    let mut pages = second.pages(PID, 1).unwrap();
    pages.add_hole(0x1000, 1, PE_PARENT).unwrap();
    pages.add_pages(0x2000, &page(3), true).unwrap();
    pages.finish().unwrap();
    second.finish(&inventory).unwrap();

    let set = ImageSet::open(root.path().join("r2")).unwrap();
    let view = set.memory(42).unwrap();
    assert_eq!(data_tag(view.page(0x1000).unwrap()), (1, 1));
    assert_eq!(data_tag(view.page(0x2000).unwrap()), (3, 0));
    assert_eq!(
        fs::read_link(root.path().join("r2/parent")).unwrap(),
        Path::new("../r1")
    );
}

/// A run delivered in parts (as the dumper's page pipes deliver a long run) reads back
/// whole; a writer still owed bytes refuses to finish, and refuses more than it is owed.
#[test]
fn a_run_written_in_parts_reads_back_whole_and_owed_bytes_block_finish() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("parts");
    fs::create_dir_all(&dir).unwrap();
    let mut w = PagesWriter::create(&dir, PID, 1).unwrap();
    w.start_pages(0x10000, 3, true).unwrap();
    assert!(matches!(
        w.add_pages(0x20000, &page(1), false),
        Err(PagesWriteError::Owed {
            vaddr: 0x10000,
            left: 0x3000
        })
    ));
    let first: Vec<u8> = [page(0xa0), page(0xa1)].concat();
    w.append_from(0x1800, &mut &first[..0x1800]).unwrap();
    w.append_from(0x800, &mut &first[0x1800..]).unwrap();
    assert!(matches!(
        w.append_from(0x2000, &mut &[0u8; 0x2000][..]),
        Err(PagesWriteError::TooMuch { left: 0x1000, .. })
    ));
    w.append_from(0x1000, &mut &page(0xa2)[..]).unwrap();
    w.start_pages(0x20000, 1, false).unwrap();
    w.append_from(0x1000, &mut &page(0xb0)[..]).unwrap();
    let summary = w.finish().unwrap();
    assert_eq!(summary.present_pages, 4);
    assert_eq!(summary.entries, 2);

    let view = MemoryView::open(&dir, PID).unwrap();
    for (addr, tag) in [
        (0x10000, 0xa0),
        (0x11000, 0xa1),
        (0x12000, 0xa2),
        (0x20000, 0xb0),
    ] {
        assert_eq!(data_tag(view.page(addr).unwrap()), (tag, 0), "{addr:#x}");
    }

    let short = root.path().join("short");
    fs::create_dir_all(&short).unwrap();
    let mut w = PagesWriter::create(&short, PID, 1).unwrap();
    w.start_pages(0x10000, 2, false).unwrap();
    w.append_from(0x1000, &mut &page(1)[..]).unwrap();
    assert!(matches!(
        w.finish(),
        Err(PagesWriteError::Owed { left: 0x1000, .. })
    ));
    assert_eq!(
        fs::read_dir(&short).unwrap().count(),
        0,
        "nothing committed"
    );
}
