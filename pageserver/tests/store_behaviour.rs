//! Dedup, zero pages, parents and lazy GET through the client API.

mod common;

use std::os::fd::AsFd;

use common::{TestServer, patterned_pages};
use cryo_pageserver::client::Client;
use cryo_pageserver::export::{ExportOptions, export_checkpoint};
use cryo_pageserver::protocol::{DstId, PE_PARENT, PE_PRESENT};
use cryo_pageserver::server::{ParentPolicy, SessionEnd};
use cryo_pageserver::store::{CheckpointInfo, Store};

fn committed(server: &mut TestServer) -> CheckpointInfo {
    match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("{other:?}"),
    }
}

#[test]
fn hundred_mib_of_zero_pages_store_almost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let zeros = vec![0u8; 4 << 20];
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(1)).unwrap();
    for i in 0..25u64 {
        c.add_pages(DstId::pid(1), 0x4000_0000 + i * (4 << 20), &zeros, false)
            .unwrap();
    }
    c.close().unwrap();
    let info = committed(&mut server);
    assert_eq!(info.stats.pages_received, 25 * 1024);
    assert_eq!(info.stats.zero_pages, 25 * 1024);
    assert_eq!(info.stats.stored_bytes, 0);
    let totals = store.totals().unwrap();
    assert_eq!(totals.unique_pages, 0);
    assert_eq!(totals.segment_bytes, 0);
    // The index itself stays small too (refs are 8 bytes per page).
    let index = std::fs::metadata(tmp.path().join("index.redb"))
        .unwrap()
        .len();
    assert!(index < 2 << 20, "index is {index} bytes");
}

#[test]
fn pages_spliced_from_a_pipe_arrive_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let data = patterned_pages(77, 8);
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&wr, &data).unwrap();
    drop(wr);

    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(9)).unwrap();
    c.add_from_fd(DstId::pid(9), 0x7000_0000, 8, rd.as_fd(), false)
        .unwrap();
    c.close().unwrap();
    let info = committed(&mut server);
    let pm = store.pagemap(info.id, DstId::pid(9)).unwrap().unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_pages(&pm.refs, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_pipe_that_runs_dry_is_reported_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&wr, &vec![1u8; 4096]).unwrap();
    drop(wr);
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(9)).unwrap();
    let err = c
        .add_from_fd(DstId::pid(9), 0x7000_0000, 2, rd.as_fd(), false)
        .unwrap_err();
    assert!(matches!(
        err,
        cryo_pageserver::client::ClientError::SourceShort {
            sent: 4096,
            want: 8192,
            ..
        }
    ));
    drop(c);
    assert!(server.next_result().is_err());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_pre_dump_chain_deduplicates_and_get_follows_holes_to_the_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start_with(store.clone(), ParentPolicy::Latest);
    let dst = DstId::pid(500);
    let round1 = patterned_pages(0, 16);

    // Round 1: everything present. No parent yet.
    let mut c = Client::connect(server.addr).unwrap();
    assert!(!c.open2(dst).unwrap());
    c.add_pages(dst, 0x10_0000, &round1, false).unwrap();
    c.close().unwrap();
    let first = committed(&mut server);
    assert_eq!(first.parent, None);

    // Round 2: pages 0..8 unchanged (hole), 8..16 re-sent with four changed pages.
    let mut round2 = round1.clone();
    round2[12 * 4096..16 * 4096].fill(0x5a);
    let mut c = Client::connect(server.addr).unwrap();
    assert!(c.parent(dst).unwrap(), "the parent has this pagemap");
    assert!(c.open2(dst).unwrap());
    c.hole(dst, 0x10_0000, 8).unwrap();
    c.add_pages(dst, 0x10_0000 + 8 * 4096, &round2[8 * 4096..], false)
        .unwrap();
    c.close().unwrap();
    let second = committed(&mut server);
    assert_eq!(second.parent, Some(first.id));
    assert_eq!(second.stats.parent_pages, 8);
    // Pages 8..12 are already stored; the last three 0x5a pages repeat the first.
    assert_eq!(second.stats.dedup_pages, 4 + 3);
    // The four 0x5a pages are one page of content.
    assert_eq!(second.stats.new_pages, 1);

    let pm = store.pagemap(second.id, dst).unwrap().unwrap();
    assert_eq!(pm.entries[0].flags, PE_PARENT);
    assert_eq!(pm.entries[1].flags, PE_PRESENT);

    // Export keeps the hole (8 pages in the pages image), or resolves it with `flatten`.
    let out = tmp.path().join("holes");
    let summary = export_checkpoint(&store, second.id, &out, &ExportOptions::default()).unwrap();
    assert_eq!((summary.pages, summary.hole_pages), (8, 8));
    let flat_dir = tmp.path().join("flat");
    let flat = ExportOptions {
        flatten: true,
        ..ExportOptions::default()
    };
    let summary = export_checkpoint(&store, second.id, &flat_dir, &flat).unwrap();
    assert_eq!((summary.pages, summary.hole_pages), (16, 0));
    let pagemap = cryo_format::Pagemap::open(flat_dir.join("pagemap-500.img")).unwrap();
    assert!(
        pagemap
            .runs()
            .iter()
            .all(|r| r.is_present() && !r.in_parent())
    );
    let pages = std::fs::read(flat_dir.join(pagemap.pages_file_name())).unwrap();
    assert_eq!(&pages[..8 * 4096], &round1[..8 * 4096]);
    assert_eq!(&pages[8 * 4096..], &round2[8 * 4096..]);

    // GET reads the newest checkpoint and follows its hole into round 1.
    let mut c = Client::connect(server.addr).unwrap();
    let mut buf = vec![0u8; 16 * 4096];
    assert_eq!(c.get(500, 0x10_0000, &mut buf).unwrap(), 8);
    assert_eq!(&buf[..8 * 4096], &round1[..8 * 4096]);
    assert_eq!(c.get(500, 0x10_0000 + 8 * 4096, &mut buf).unwrap(), 8);
    assert_eq!(&buf[..8 * 4096], &round2[8 * 4096..]);
    c.close().unwrap();
    server.next_result().unwrap();
}

#[test]
fn cryo_clients_negotiate_and_choose_parent_and_source_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let dst = DstId::pid(3);
    let pages = patterned_pages(5, 4);

    let mut c = Client::connect(server.addr).unwrap();
    let hello = c.hello().unwrap();
    c.add_pages(dst, 0x1000, &pages, false).unwrap();
    c.close().unwrap();
    assert_eq!(committed(&mut server).id, hello.checkpoint_id);

    let mut c = Client::connect(server.addr).unwrap();
    c.hello().unwrap();
    assert!(!c.set_parent(Some(999)).unwrap(), "no checkpoint 999");
    assert!(c.set_parent(Some(hello.checkpoint_id)).unwrap());
    assert!(c.open2(dst).unwrap());
    c.hole(dst, 0x1000, 4).unwrap();
    c.close().unwrap();
    let child = committed(&mut server);
    assert_eq!(child.parent, Some(hello.checkpoint_id));

    let mut c = Client::connect(server.addr).unwrap();
    c.hello().unwrap();
    assert!(c.use_checkpoint(hello.checkpoint_id).unwrap());
    let mut buf = vec![0u8; 4 * 4096];
    assert_eq!(c.get(3, 0x2000, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3 * 4096], &pages[4096..]);
    // A negotiated client gets an empty answer for a missing page instead of a hang-up.
    assert_eq!(c.get(3, 0x9000_0000, &mut buf).unwrap(), 0);
    c.close().unwrap();
    server.next_result().unwrap();
}

#[test]
fn read_only_session_closes_without_committing_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let dst = DstId::pid(7);
    let pages = patterned_pages(9, 2);

    let mut c = Client::connect(server.addr).unwrap();
    let hello = c.hello().unwrap();
    c.add_pages(dst, 0x4000, &pages, false).unwrap();
    c.close().unwrap();
    assert_eq!(committed(&mut server).id, hello.checkpoint_id);

    // A restorer's session: HELLO (which reserves an id), USE_CHECKPOINT, GET, CLOSE.
    let mut c = Client::connect(server.addr).unwrap();
    c.hello().unwrap();
    assert!(c.use_checkpoint(hello.checkpoint_id).unwrap());
    let mut buf = vec![0u8; 2 * 4096];
    assert_eq!(c.get(7, 0x4000, &mut buf).unwrap(), 2);
    assert_eq!(buf, pages);
    c.close().unwrap();
    assert!(
        matches!(server.next_result(), Ok(SessionEnd::Closed)),
        "a GET-only session ends as Closed"
    );

    let listed: Vec<u64> = store.list().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(
        listed,
        vec![hello.checkpoint_id],
        "no empty checkpoint was listed"
    );
}
