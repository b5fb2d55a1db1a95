//! Framing of the image types whose entries carry raw bytes, and whole-set writing.

use cryo_format::magic::well_known;
use cryo_format::schema::{
    GhostChunkEntry, GhostFileEntry, InventoryEntry, PipeDataEntry, PstreeEntry, SkPacketEntry,
    TcpStreamEntry,
};
use cryo_format::{ImageFile, ImageSet, ImageSetError, ImageWriter, PagemapId};

#[test]
fn ghost_file_without_chunks_owns_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ghost-file-1.img");
    let ghost = GhostFileEntry {
        uid: 0,
        gid: 0,
        mode: 0o100644,
        ..Default::default()
    };
    let mut w = ImageWriter::create(&path, well_known::ghost_file()).unwrap();
    w.write_with_extra(&ghost, b"the whole content").unwrap();
    w.finish().unwrap();

    let image = ImageFile::open(&path).unwrap();
    let entries: Vec<_> = image.entries().collect::<Result<_, _>>().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].extra, Some(&b"the whole content"[..]));
    assert_eq!(entries[0].message, Some("criu.ghost_file_entry"));
    let decoded: GhostFileEntry = image.decode(&entries[0]).unwrap();
    assert_eq!(decoded.mode, 0o100644);
}

#[test]
fn ghost_file_chunks_are_chunk_entries_each_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ghost-file-2.img");
    let ghost = GhostFileEntry {
        chunks: Some(true),
        size: Some(1 << 20),
        ..Default::default()
    };
    let mut w = ImageWriter::create(&path, well_known::ghost_file()).unwrap();
    w.write(&ghost).unwrap();
    for (off, data) in [(0u64, &b"abc"[..]), (4096, &b"defgh"[..])] {
        let chunk = GhostChunkEntry {
            len: data.len() as u64,
            off,
        };
        w.write_with_extra(&chunk, data).unwrap();
    }
    w.finish().unwrap();

    let image = ImageFile::open(&path).unwrap();
    let entries: Vec<_> = image.entries().collect::<Result<_, _>>().unwrap();
    let shape: Vec<_> = entries
        .iter()
        .map(|e| (e.message.unwrap(), e.extra))
        .collect();
    assert_eq!(
        shape,
        [
            ("criu.ghost_file_entry", Some(&b""[..])),
            ("criu.ghost_chunk_entry", Some(&b"abc"[..])),
            ("criu.ghost_chunk_entry", Some(&b"defgh"[..])),
        ]
    );
    let second: GhostChunkEntry = image.decode(&entries[2]).unwrap();
    assert_eq!(second.off, 4096);
}

#[test]
fn tcp_stream_and_sk_queue_extras_are_sized_by_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp-stream-1.img");
    let tcp = TcpStreamEntry {
        inq_len: 3,
        outq_len: 2,
        ..Default::default()
    };
    let mut w = ImageWriter::create(&path, well_known::tcp_stream()).unwrap();
    w.write_with_extra(&tcp, b"inqou").unwrap();
    w.finish().unwrap();
    let image = ImageFile::open(&path).unwrap();
    let (entry, data) = image
        .decode_with_extra::<TcpStreamEntry>()
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((entry.inq_len, data), (3, &b"inqou"[..]));

    let path = dir.path().join("sk-queues.img");
    let mut w = ImageWriter::create(&path, well_known::sk_queues()).unwrap();
    for payload in [&b"one"[..], b"", b"three"] {
        let pkt = SkPacketEntry {
            id_for: 9,
            length: payload.len() as u32,
            ..Default::default()
        };
        w.write_with_extra(&pkt, payload).unwrap();
    }
    w.finish().unwrap();
    let image = ImageFile::open(&path).unwrap();
    let packets = image.decode_with_extra::<SkPacketEntry>().unwrap();
    let lens: Vec<_> = packets.iter().map(|(_, d)| *d).collect();
    assert_eq!(lens, [&b"one"[..], b"", b"three"]);
}

#[test]
fn an_image_set_becomes_readable_only_once_the_inventory_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = ImageSet::create(dir.path()).unwrap();
    let tree = [PstreeEntry {
        pid: 77,
        ppid: 0,
        pgid: 77,
        sid: 1,
        threads: vec![77],
    }];
    out.write_pstree(&tree).unwrap();
    let pipe = PipeDataEntry {
        pipe_id: 5,
        bytes: 2,
        size: Some(65536),
    };
    out.write_pipes_data(&[(pipe, &b"hi"[..])]).unwrap();
    let mut pages = out.pages(PagemapId::Pid(77), 1).unwrap();
    pages.add_pages(0x4000, &[7u8; 4096], false).unwrap();
    pages.finish().unwrap();

    assert!(matches!(
        ImageSet::open(dir.path()),
        Err(ImageSetError::MissingInventory { .. })
    ));
    let inventory = InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        ..Default::default()
    };
    out.finish(&inventory).unwrap();

    let set = ImageSet::open(dir.path()).unwrap();
    assert_eq!(set.pstree().unwrap(), tree);
    assert_eq!(set.pipes_data().unwrap()[0].1, b"hi");
    assert_eq!(
        set.memory(77).unwrap().read_u64(0x4008).unwrap(),
        0x0707_0707_0707_0707
    );
    assert!(
        set.files().unwrap().is_empty(),
        "absent files.img reads as empty"
    );
    assert!(matches!(
        ImageSet::create(dir.path()),
        Err(ImageSetError::AlreadyComplete { .. })
    ));
}
