//! The real `pageserver` binary killed with SIGKILL: acknowledged checkpoints survive, partial
//! ones are never listed.

mod common;

use std::time::{Duration, Instant};

use common::{ServerProcess, patterned_pages};
use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::DstId;
use cryo_pageserver::store::Store;

#[test]
fn a_checkpoint_acknowledged_by_close_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    let data = patterned_pages(1000, 512);

    let mut c = Client::connect(server.addr).unwrap();
    let hello = c.hello().unwrap();
    c.open2(DstId::pid(31)).unwrap();
    c.add_pages(DstId::pid(31), 0x5555_0000_0000, &data, false)
        .unwrap();
    c.close().unwrap();
    server.kill9();

    let store = Store::open(tmp.path()).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, hello.checkpoint_id);
    let pm = store
        .pagemap(hello.checkpoint_id, DstId::pid(31))
        .unwrap()
        .unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_pages(&pm.refs, &mut back).unwrap();
    assert!(back == data, "pages read back after the crash differ");
}

#[test]
fn a_session_cut_by_kill_9_is_never_listed_and_its_segment_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(tmp.path());
    let data = patterned_pages(0, 1024);

    // One committed checkpoint first, so the store is not trivially empty.
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(1)).unwrap();
    c.add_pages(DstId::pid(1), 0x1000_0000, &data[..64 * 4096], false)
        .unwrap();
    c.close().unwrap();

    // The second session sends most of its pages, then the server dies.
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(2)).unwrap();
    c.add_pages(DstId::pid(2), 0x2000_0000, &data, false)
        .unwrap();
    // Wait until the server has written part of this session to a segment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "second segment never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9();
    drop(c);

    let store = Store::open(tmp.path()).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "only the closed checkpoint is listed");
    assert!(
        store
            .pagemap(listed[0].id, DstId::pid(2))
            .unwrap()
            .is_none()
    );
    let segments = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(
        segments, 1,
        "the cut session's segment is cleaned up on open"
    );
}
