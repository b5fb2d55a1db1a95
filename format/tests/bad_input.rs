//! Every kind of bad image gives its own error variant, naming the file and the entry.
//! (Bad pagemaps, writer input and image sets: `bad_sets.rs`.)

use std::fs;
use std::path::{Path, PathBuf};

use cryo_format::magic::{IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, well_known};
use cryo_format::schema::PstreeEntry;
use cryo_format::validate::ValidateError;
use cryo_format::wire::put_varint_field;
use cryo_format::{ImageError, ImageFile, ImageWriter, Magic};

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

fn open_err(dir: &Path, bytes: &[u8]) -> ImageError {
    let path = write(dir, "bad.img", bytes);
    ImageFile::open(&path).expect_err("bad image must not open")
}

fn first_entry_err(dir: &Path, bytes: &[u8]) -> ImageError {
    let path = write(dir, "bad.img", bytes);
    let image = ImageFile::open(&path).expect("header is fine");
    image
        .entries()
        .find_map(Result::err)
        .expect("framing must fail")
}

#[test]
fn short_headers_are_truncated_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        open_err(dir.path(), &[]),
        ImageError::TruncatedHeader {
            len: 0,
            needed: 4,
            ..
        }
    ));
    assert!(matches!(
        open_err(dir.path(), &[0x19, 0x43]),
        ImageError::TruncatedHeader { needed: 4, .. }
    ));
    assert!(matches!(
        open_err(dir.path(), &IMG_COMMON_MAGIC.to_le_bytes()),
        ImageError::TruncatedHeader {
            len: 4,
            needed: 8,
            ..
        }
    ));
}

#[test]
fn unknown_magics_are_named_in_hex_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_err(dir.path(), &0xdead_beef_u32.to_le_bytes());
    assert!(matches!(
        err,
        ImageError::UnknownMagic {
            value: 0xdead_beef,
            offset: 0,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("0xdeadbeef") && text.contains("bad.img"),
        "{text}"
    );

    let mut bytes = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0x1234_5678_u32.to_le_bytes());
    assert!(matches!(
        open_err(dir.path(), &bytes),
        ImageError::UnknownMagic {
            value: 0x1234_5678,
            offset: 4,
            ..
        }
    ));
}

#[test]
fn v1_images_wrong_first_magic_and_wrong_type_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core = well_known::core();
    assert!(matches!(
        open_err(dir.path(), &core.value.to_le_bytes()),
        ImageError::LegacyV1 { name: "CORE", .. }
    ));

    let mut bytes = IMG_SERVICE_MAGIC.to_le_bytes().to_vec();
    bytes.extend_from_slice(&core.value.to_le_bytes());
    assert!(matches!(
        open_err(dir.path(), &bytes),
        ImageError::WrongHeader { name: "CORE", .. }
    ));

    let path = write(dir.path(), "mm.img", &header(well_known::mm()));
    let err = ImageFile::open_expect(&path, core).unwrap_err();
    assert!(matches!(
        err,
        ImageError::WrongType {
            expected: "CORE",
            found: "MM",
            ..
        }
    ));
}

#[test]
fn framing_errors_name_the_entry_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let magic = well_known::pstree();
    let mut one = Vec::new();
    put_varint_field(&mut one, 1, 1);
    put_varint_field(&mut one, 2, 0);
    put_varint_field(&mut one, 3, 1);
    put_varint_field(&mut one, 4, 1);

    let mut bytes = header(magic);
    entry(&mut bytes, &one, &[]);
    bytes.extend_from_slice(&[1, 0]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::TruncatedLength {
            index: 1,
            offset: 20,
            remaining: 2,
            ..
        }
    ));

    let mut bytes = header(magic);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::AbsurdLength {
            index: 0,
            len: u32::MAX,
            ..
        }
    ));

    let mut bytes = header(magic);
    bytes.extend_from_slice(&10u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 5]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::EntryPastEnd {
            index: 0,
            len: 10,
            remaining: 5,
            ..
        }
    ));
}

#[test]
fn extra_payload_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let magic = well_known::pipes_data();

    let mut msg = Vec::new();
    put_varint_field(&mut msg, 1, 7);
    put_varint_field(&mut msg, 2, 100);
    let mut bytes = header(magic);
    entry(&mut bytes, &msg, &[0xaa; 10]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::ExtraPastEnd {
            index: 0,
            len: 100,
            remaining: 10,
            ..
        }
    ));

    let mut msg = Vec::new();
    put_varint_field(&mut msg, 1, 7);
    let mut bytes = header(magic);
    entry(&mut bytes, &msg, &[]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::ExtraFieldMissing { field: "bytes", .. }
    ));

    let mut bytes = header(magic);
    entry(&mut bytes, &[0x0a, 0x80], &[]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::Wire { index: 0, .. }
    ));
}

#[test]
fn missing_required_fields_are_named_with_their_path() {
    let dir = tempfile::tempdir().unwrap();

    // pstree_entry without pid (field 1).
    let mut msg = Vec::new();
    put_varint_field(&mut msg, 2, 0);
    put_varint_field(&mut msg, 3, 1);
    put_varint_field(&mut msg, 4, 1);
    let mut bytes = header(well_known::pstree());
    entry(&mut bytes, &msg, &[]);
    let path = write(dir.path(), "pstree.img", &bytes);
    let err = ImageFile::open(&path)
        .unwrap()
        .decode_all::<PstreeEntry>()
        .unwrap_err();
    let ImageError::Invalid {
        index: 0,
        source: ValidateError::MissingRequired { message, field },
        ..
    } = &err
    else {
        panic!("wrong error: {err:?}");
    };
    assert_eq!(
        (message.as_str(), field.as_str()),
        ("criu.pstree_entry", "pid")
    );

    // core_entry whose thread_info lacks gpregs.
    let mut thread_info = Vec::new();
    put_varint_field(&mut thread_info, 1, 0);
    let mut core = Vec::new();
    put_varint_field(&mut core, 1, 1);
    core.push(0x12);
    core.push(thread_info.len() as u8);
    core.extend_from_slice(&thread_info);
    let mut bytes = header(well_known::core());
    entry(&mut bytes, &core, &[]);
    let path = write(dir.path(), "core-1.img", &bytes);
    let image = ImageFile::open(&path).unwrap();
    let raw = image.entries().next().unwrap().unwrap();
    let err = image.check(&raw).unwrap_err();
    assert!(
        matches!(&err, ImageError::Invalid { source: ValidateError::MissingRequired { field, .. }, .. } if field == "thread_info.gpregs"),
        "{err}"
    );
}

#[test]
fn decode_one_demands_exactly_one_entry_and_absent_images_can_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let tree = PstreeEntry {
        pid: 1,
        ..Default::default()
    };
    let path = dir.path().join("pstree.img");
    let mut w = ImageWriter::create(&path, well_known::pstree()).unwrap();
    w.write(&tree).unwrap();
    w.write(&tree).unwrap();
    w.finish().unwrap();
    let err = ImageFile::open(&path)
        .unwrap()
        .decode_one::<PstreeEntry>()
        .unwrap_err();
    assert!(matches!(err, ImageError::EntryCount { found: 2, .. }));

    let absent = dir.path().join("files.img");
    assert!(ImageFile::open(&absent).unwrap_err().is_not_found());
    let empty = ImageFile::open_or_empty(&absent, well_known::files()).unwrap();
    assert_eq!(empty.entries().count(), 0);
}

#[test]
fn undecodable_messages_and_types_without_a_message_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = header(well_known::pstree());
    entry(&mut bytes, &[0x0a, 0x05, 0x01], &[]); // field 1 as a 5-byte string, cut short
    let path = write(dir.path(), "pstree.img", &bytes);
    let err = ImageFile::open(&path)
        .unwrap()
        .decode_all::<PstreeEntry>()
        .unwrap_err();
    assert!(matches!(
        err,
        ImageError::Decode {
            index: 0,
            message: "criu.pstree_entry",
            ..
        }
    ));

    let signal = cryo_format::magic::by_name("SIGNAL").unwrap();
    let mut bytes = header(signal);
    entry(&mut bytes, &[0x08, 0x01], &[]);
    let path = write(dir.path(), "signal-s-1.img", &bytes);
    let image = ImageFile::open(&path).unwrap();
    let err = image.decode_all::<PstreeEntry>().unwrap_err();
    assert!(matches!(
        err,
        ImageError::NoMessage {
            magic: "SIGNAL",
            ..
        }
    ));
}

#[test]
fn nested_ipc_messages_cut_short_are_malformed_extras() {
    let dir = tempfile::tempdir().unwrap();
    let magic = cryo_format::magic::by_name("IPCNS_MSG").unwrap();
    let mut msg = Vec::new();
    put_varint_field(&mut msg, 3, 1); // qnum = 1, but no nested record follows
    let mut bytes = header(magic);
    entry(&mut bytes, &msg, &[]);
    assert!(matches!(
        first_entry_err(dir.path(), &bytes),
        ImageError::ExtraMalformed {
            index: 0,
            what: "ipc_msg length cut short",
            ..
        }
    ));
}

#[test]
fn a_directory_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = ImageFile::open(dir.path()).expect_err("a directory is not an image");
    assert!(
        matches!(&err, ImageError::IsDirectory { path } if path == dir.path()),
        "{err:?}"
    );
}
