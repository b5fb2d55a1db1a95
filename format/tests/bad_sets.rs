//! Bad pagemaps, bad writer input and bad image sets give their own error variants.

use std::fs;
use std::path::{Path, PathBuf};

use cryo_format::magic::well_known;
use cryo_format::pagemap::{self, PE_PRESENT};
use cryo_format::schema::{InventoryEntry, PipeDataEntry};
use cryo_format::wire::put_varint_field;
use cryo_format::{
    ImageFile, ImageSet, ImageSetError, ImageWriter, Magic, Pagemap, PagemapError, WriteError,
};

fn header(magic: &Magic) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(first) = magic.first_magic() {
        out.extend_from_slice(&first.to_le_bytes());
    }
    out.extend_from_slice(&magic.value.to_le_bytes());
    out
}

fn entry(out: &mut Vec<u8>, payload: &[u8], extra: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(extra);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write test image");
    path
}

#[test]
fn pagemap_errors_for_missing_head_compression_and_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let magic = well_known::pagemap();
    let path = write(dir.path(), "pagemap-1.img", &header(magic));
    assert!(matches!(
        Pagemap::open(&path),
        Err(PagemapError::MissingHead { .. })
    ));

    let mut head = Vec::new();
    pagemap::encode_head(&mut head, 1);
    let mut compressed = Vec::new();
    pagemap::encode_entry(&mut compressed, 0x1000, 1, PE_PRESENT);
    compressed.extend_from_slice(&[0x32, 1, 9]); // field 6, packed
    let mut bytes = header(magic);
    entry(&mut bytes, &head, &[]);
    entry(&mut bytes, &compressed, &[]);
    let path = write(dir.path(), "pagemap-2.img", &bytes);
    assert!(matches!(
        Pagemap::open(&path),
        Err(PagemapError::Compressed {
            index: 1,
            field: "compressed_size",
            ..
        })
    ));

    let mut bytes = header(magic);
    entry(&mut bytes, &head, &[]);
    for vaddr in [0x1000u64, 0x2000] {
        let mut e = Vec::new();
        pagemap::encode_entry(&mut e, vaddr, 2, PE_PRESENT);
        entry(&mut bytes, &e, &[]);
    }
    let path = write(dir.path(), "pagemap-3.img", &bytes);
    assert!(matches!(
        Pagemap::open(&path),
        Err(PagemapError::Overlap {
            index: 2,
            vaddr: 0x2000,
            prev_end: 0x3000,
            ..
        })
    ));
}

#[test]
fn unfinished_writers_leave_nothing_and_extra_sizes_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipes-data.img");
    {
        let mut w = ImageWriter::create(&path, well_known::pipes_data()).unwrap();
        let entry = PipeDataEntry {
            pipe_id: 1,
            bytes: 4,
            size: None,
        };
        let err = w.write_with_extra(&entry, b"abc").unwrap_err();
        assert!(matches!(
            err,
            WriteError::ExtraMismatch {
                index: 0,
                given: 3,
                announced: 4,
                ..
            }
        ));
        w.write_with_extra(&entry, b"abcd").unwrap();
        // Dropped without finish.
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    let raw = cryo_format::magic::by_name("PAGES").unwrap();
    assert!(matches!(
        ImageWriter::create(dir.path().join("pages-1.img"), raw),
        Err(WriteError::NotFramed { magic: "PAGES", .. })
    ));
}

fn inventory(version: u32, per_id: Option<bool>, compress: Option<u32>) -> InventoryEntry {
    InventoryEntry {
        img_version: version,
        fdinfo_per_id: per_id,
        compress,
        ..Default::default()
    }
}

fn write_inventory(dir: &Path, inv: &InventoryEntry) {
    let mut w = ImageWriter::create(dir.join("inventory.img"), well_known::inventory()).unwrap();
    w.write(inv).unwrap();
    w.finish().unwrap();
}

#[test]
fn image_sets_refuse_missing_old_and_compressed_inventories() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ImageSet::open(dir.path()),
        Err(ImageSetError::MissingInventory { .. })
    ));
    write_inventory(dir.path(), &inventory(1, Some(true), None));
    assert!(matches!(
        ImageSet::open(dir.path()),
        Err(ImageSetError::Version { version: 1, .. })
    ));
    write_inventory(dir.path(), &inventory(2, None, None));
    assert!(matches!(
        ImageSet::open(dir.path()),
        Err(ImageSetError::NotPerId { .. })
    ));
    write_inventory(dir.path(), &inventory(2, Some(true), Some(2)));
    assert!(matches!(
        ImageSet::open(dir.path()),
        Err(ImageSetError::Compressed { mode: 2, .. })
    ));
    write_inventory(dir.path(), &inventory(2, Some(true), Some(0)));
    assert!(ImageSet::open(dir.path()).is_ok());
}

#[test]
fn empty_pagemap_runs_are_dropped_from_the_index() {
    // Found by the fuzzer: a run of 0 pages sat in the index where no lookup could find it.
    let mut head = Vec::new();
    pagemap::encode_head(&mut head, 1);
    let mut bytes = header(well_known::pagemap());
    entry(&mut bytes, &head, &[]);
    for (vaddr, n) in [(0x1000u64, 0u64), (0x1000, 1)] {
        let mut e = Vec::new();
        pagemap::encode_entry(&mut e, vaddr, n, PE_PRESENT);
        entry(&mut bytes, &e, &[]);
    }
    let image = ImageFile::from_bytes("mem", bytes).unwrap();
    let map = Pagemap::parse(&image).unwrap();
    assert_eq!(map.runs().len(), 1);
    assert_eq!(map.find(0x1000).map(|r| r.entry_index), Some(2));
    assert_eq!(map.runs()[0].pages_offset, Some(0));
}

#[test]
fn unknown_pagemap_flags_are_refused() {
    let mut head = Vec::new();
    pagemap::encode_head(&mut head, 1);
    let mut e = Vec::new();
    pagemap::encode_entry(&mut e, 0x1000, 1, 0x40);
    let mut bytes = header(well_known::pagemap());
    entry(&mut bytes, &head, &[]);
    entry(&mut bytes, &e, &[]);
    let image = ImageFile::from_bytes("pagemap-1.img", bytes).unwrap();
    assert!(matches!(
        Pagemap::parse(&image),
        Err(PagemapError::UnknownFlags {
            index: 1,
            flags: 0x40,
            ..
        })
    ));
}

#[test]
fn writer_input_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w =
        ImageWriter::create(dir.path().join("pipes-data.img"), well_known::pipes_data()).unwrap();
    let mut no_bytes = Vec::new();
    put_varint_field(&mut no_bytes, 1, 3);
    assert!(matches!(
        w.write_raw(&no_bytes, b""),
        Err(WriteError::ExtraUnsized { index: 0, .. })
    ));

    let mut pages =
        cryo_format::PagesWriter::create(dir.path(), cryo_format::PagemapId::Pid(1), 1).unwrap();
    let err = pages
        .add_pages_from(0x1000, 2, false, &mut &[0u8; 4096][..])
        .unwrap_err();
    assert!(matches!(
        err,
        cryo_format::PagesWriteError::ShortSource {
            got: 4096,
            want: 8192,
            ..
        }
    ));
    // The run that ran short is still owed its bytes: nothing else may follow it.
    assert!(matches!(
        pages.add_pages(0x3000, &[0; 4096], false),
        Err(cryo_format::PagesWriteError::Owed {
            vaddr: 0x1000,
            left: 4096
        })
    ));
    drop(pages);
    let mut pages =
        cryo_format::PagesWriter::create(dir.path(), cryo_format::PagemapId::Pid(1), 1).unwrap();
    assert!(matches!(
        pages.add_pages(0x1234, &[0; 4096], false),
        Err(cryo_format::PagesWriteError::Unaligned { vaddr: 0x1234 })
    ));

    let file = write(dir.path(), "plain-file", b"x");
    assert!(matches!(
        ImageSet::create(file.join("sub")),
        Err(ImageSetError::CreateDir { .. })
    ));
}

#[test]
fn an_empty_pstree_has_no_root() {
    let dir = tempfile::tempdir().unwrap();
    write_inventory(dir.path(), &inventory(2, Some(true), None));
    write(dir.path(), "pstree.img", &header(well_known::pstree()));
    let set = ImageSet::open(dir.path()).unwrap();
    assert!(matches!(set.root(), Err(ImageSetError::EmptyPstree { .. })));
}
