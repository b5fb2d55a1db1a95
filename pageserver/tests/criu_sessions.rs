//! Recorded CRIU 4.2 page-server sessions replayed into cryo's server over loopback.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{TestServer, fixture};
use cryo_pageserver::client::Client;
use cryo_pageserver::export::{ExportOptions, export_checkpoint};
use cryo_pageserver::server::SessionEnd;
use cryo_pageserver::store::Store;

/// Pagemaps written as CRIU 4.2's page server writes them (0 in `compat_nr_pages`).
const CRIU_4_2_LAYOUT: ExportOptions = ExportOptions {
    parent_link: None,
    flatten: false,
    zero_compat_nr_pages: true,
};

/// Sends the recorded client bytes and returns exactly the bytes the server answered.
fn replay(addr: std::net::SocketAddr, session: &Path) -> Vec<u8> {
    let sent = std::fs::read(session.join("client-to-server.bin")).unwrap();
    let expected_len = std::fs::metadata(session.join("server-to-client.bin"))
        .unwrap()
        .len();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let feeder = std::thread::spawn(move || writer.write_all(&sent));
    let mut answer = vec![0u8; expected_len as usize];
    sock.read_exact(&mut answer).unwrap();
    feeder.join().unwrap().unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "server sent {} bytes more than CRIU's",
        rest.len()
    );
    answer
}

fn sorted_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn check_session(name: &str) {
    let session = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let mut server = TestServer::start(store.clone());

    let answer = replay(server.addr, &session);
    assert_eq!(
        answer,
        std::fs::read(session.join("server-to-client.bin")).unwrap()
    );
    let info = match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("session did not commit: {other:?}"),
    };

    // Export in CRIU 4.2's layout must reproduce what CRIU's own page server wrote.
    let out = tmp.path().join("export");
    export_checkpoint(&store, info.id, &out, &CRIU_4_2_LAYOUT).unwrap();
    let server_dir = session.join("server-dir");
    assert_eq!(sorted_files(&out), sorted_files(&server_dir));
    for f in sorted_files(&server_dir) {
        if f.starts_with("pagemap-") {
            let ours = cryo_format::Pagemap::open(out.join(&f)).unwrap();
            let theirs = cryo_format::Pagemap::open(server_dir.join(&f)).unwrap();
            assert_eq!(ours.pages_id(), theirs.pages_id(), "{f}");
            assert_eq!(ours.runs(), theirs.runs(), "{f}");
        }
        let ours = std::fs::read(out.join(&f)).unwrap();
        let theirs = std::fs::read(server_dir.join(&f)).unwrap();
        assert!(
            ours == theirs,
            "{f} differs from CRIU's ({} vs {} bytes)",
            ours.len(),
            theirs.len()
        );
    }
}

#[test]
fn counter_session_answers_like_criu_and_exports_identical_images() {
    check_session("counter");
}

#[test]
fn pipe_tree_session_answers_like_criu_and_exports_identical_images() {
    check_session("pipe-tree");
}

#[test]
fn the_same_session_twice_stores_barely_more_than_once() {
    let session = fixture("pipe-tree");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());

    replay(server.addr, &session);
    let first = match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("{other:?}"),
    };
    let after_one = store.totals().unwrap();
    replay(server.addr, &session);
    let second = match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("{other:?}"),
    };
    let after_two = store.totals().unwrap();

    assert_eq!(first.stats.pages_received, second.stats.pages_received);
    assert!(first.stats.new_pages > 0);
    assert_eq!(
        second.stats.new_pages, 0,
        "every page of the repeat is a duplicate"
    );
    assert_eq!(second.stats.stored_bytes, 0);
    assert_eq!(after_one.unique_pages, after_two.unique_pages);
    assert_eq!(after_one.segment_bytes, after_two.segment_bytes);
    // The three processes of pipe-tree share most pages: dedup works inside one session too.
    assert!(
        first.stats.dedup_pages > first.stats.pages_received / 2,
        "{:?}",
        first.stats
    );
}

#[test]
fn get_answers_a_single_range_from_the_stored_checkpoint() {
    let session = fixture("counter");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    replay(server.addr, &session);
    server.next_result().unwrap();

    // The 254-page entry at 0x7f7db0c00000 is pages 5..259 of CRIU's pages image.
    let pages = std::fs::read(session.join("server-dir/pages-65537.img")).unwrap();
    let mut client = Client::connect(server.addr).unwrap();
    let mut buf = vec![0u8; 300 * 4096];
    let got = client
        .get(14205, 0x7f7d_b0c0_0000 + 4096, &mut buf)
        .unwrap();
    assert_eq!(got, 253, "the server answers up to the end of the entry");
    assert_eq!(&buf[..253 * 4096], &pages[6 * 4096..259 * 4096]);
    client.close().unwrap();
    assert!(matches!(server.next_result().unwrap(), SessionEnd::Closed));
}

/// Rewrites a recorded CRIU 4.2 stream with the pre-4.2 24-byte headers.
fn to_legacy_stream(stream: &[u8]) -> Vec<u8> {
    use cryo_pageserver::protocol::{WireHeader, parse_header};
    use zerocopy::FromBytes;
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let head: [u8; 32] = stream[at..at + 32].try_into().unwrap();
        let req = parse_header(&head).unwrap();
        out.extend_from_slice(
            &WireHeader::read_from_bytes(&head[..])
                .unwrap()
                .to_legacy_bytes(),
        );
        at += 32;
        let payload = req.payload_len() as usize;
        out.extend_from_slice(&stream[at..at + payload]);
        at += payload;
    }
    out
}

#[test]
fn a_pre_4_2_criu_stream_with_24_byte_headers_is_understood() {
    let session = fixture("pipe-tree");
    let tmp = tempfile::tempdir().unwrap();
    let legacy_dir = tmp.path().join("legacy-session");
    std::fs::create_dir_all(&legacy_dir).unwrap();
    let stream = std::fs::read(session.join("client-to-server.bin")).unwrap();
    std::fs::write(
        legacy_dir.join("client-to-server.bin"),
        to_legacy_stream(&stream),
    )
    .unwrap();
    std::fs::copy(
        session.join("server-to-client.bin"),
        legacy_dir.join("server-to-client.bin"),
    )
    .unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let mut server = TestServer::start(store.clone());
    let answer = replay(server.addr, &legacy_dir);
    assert_eq!(
        answer,
        std::fs::read(session.join("server-to-client.bin")).unwrap()
    );
    let info = match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("{other:?}"),
    };
    let out = tmp.path().join("export");
    export_checkpoint(&store, info.id, &out, &CRIU_4_2_LAYOUT).unwrap();
    for f in sorted_files(&session.join("server-dir")) {
        let ours = std::fs::read(out.join(&f)).unwrap();
        assert!(
            ours == std::fs::read(session.join("server-dir").join(&f)).unwrap(),
            "{f}"
        );
    }
}
