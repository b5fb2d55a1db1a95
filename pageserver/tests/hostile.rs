//! Malformed and hostile streams end only their own session; good sessions go on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestServer, patterned_pages};
use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::{DstId, PE_PRESENT, ProtocolError, WireHeader, add_f_word, cmd};
use cryo_pageserver::server::{SessionEnd, SessionError};
use cryo_pageserver::store::Store;

fn raw_session(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    // Close our side; the server must give up on the session.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

fn header(word: u32, nr: u64, vaddr: u64, dst: u64) -> Vec<u8> {
    WireHeader::new(word, nr, vaddr, dst).to_bytes().to_vec()
}

#[test]
fn hostile_sessions_end_alone_while_a_concurrent_good_session_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());
    let dst = DstId::pid(4242).encode();

    // A good session that stays open across all the bad ones.
    let mut good = Client::connect(server.addr).unwrap();
    assert!(!good.open2(DstId::pid(7)).unwrap());
    let data = patterned_pages(0, 64);
    good.add_pages(DstId::pid(7), 0x10000, &data[..32 * 4096], false)
        .unwrap();

    let mut open2 = header(cmd::OPEN2, 0, 0, dst);
    // 1. unknown command
    raw_session(server.addr, &header(0x77, 0, 0, 0));
    // 2. unknown flags in ADD_F
    open2.extend(header(add_f_word(0x80), 1, 0x1000, dst));
    raw_session(server.addr, &open2);
    // 3. lying nr_pages: announces 1000 pages, sends 3, then hangs up
    let mut lying = header(cmd::OPEN2, 0, 0, dst);
    lying.extend(header(add_f_word(PE_PRESENT), 1000, 0x1000, dst));
    lying.extend(vec![0xabu8; 3 * 4096]);
    raw_session(server.addr, &lying);
    // 4. disconnect in the middle of a page
    let mut mid = header(cmd::OPEN2, 0, 0, dst);
    mid.extend(header(add_f_word(PE_PRESENT), 1, 0x1000, dst));
    mid.extend(vec![0xcdu8; 1000]);
    raw_session(server.addr, &mid);
    // 5. absurd size
    raw_session(
        server.addr,
        &header(add_f_word(PE_PRESENT), u64::MAX / 4096, 0, dst),
    );
    // 6. half a header
    raw_session(server.addr, &header(cmd::OPEN2, 0, 0, dst)[..20]);
    // 7. bad destination type
    raw_session(server.addr, &header(cmd::OPEN2, 0, 0, (5 << 8) | 99));
    // 8. a cryo extension without HELLO
    raw_session(server.addr, &header(cmd::CRYO_SET_PARENT, 0, 0, 1));

    let mut errors = Vec::new();
    for _ in 0..8 {
        errors.push(server.next_result().expect_err("hostile session must fail"));
    }
    let has = |f: &dyn Fn(&SessionError) -> bool| errors.iter().any(f);
    assert!(has(&|e| matches!(
        e,
        SessionError::Protocol {
            source: ProtocolError::UnknownCommand { command: 0x77, .. },
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        SessionError::Protocol {
            source: ProtocolError::UnknownFlags { flags: 0x80, .. },
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        SessionError::Truncated { missing: 997, .. }
    )));
    assert!(has(&|e| matches!(
        e,
        SessionError::Truncated {
            missing: 1,
            vaddr: 0x1000,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        SessionError::Protocol {
            source: ProtocolError::TooManyPages { .. },
            ..
        }
    )));
    assert!(has(&|e| matches!(e, SessionError::NoClose { .. })));
    assert!(has(&|e| matches!(
        e,
        SessionError::Protocol {
            source: ProtocolError::UnknownDstType { dst_type: 99, .. },
            ..
        }
    )));
    assert!(has(&|e| matches!(e, SessionError::NotNegotiated { .. })));
    // Every message names the peer.
    for e in &errors {
        assert!(e.to_string().contains("127.0.0.1:"), "{e}");
    }

    // The good session finishes and its data is intact.
    good.add_pages(DstId::pid(7), 0x30000, &data[32 * 4096..], false)
        .unwrap();
    good.close().unwrap();
    let info = match server.next_result().unwrap() {
        SessionEnd::Committed(info) => info,
        other => panic!("{other:?}"),
    };
    let pm = store.pagemap(info.id, DstId::pid(7)).unwrap().unwrap();
    let mut back = vec![0u8; 64 * 4096];
    store.read_pages(&pm.refs, &mut back).unwrap();
    assert_eq!(back, data);

    // Only the good checkpoint is listed, and no aborted segment is left behind.
    let listed: Vec<u64> = store.list().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(listed, vec![info.id]);
    let segments = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(segments, 1);
}

#[test]
fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start_configured(
        store,
        cryo_pageserver::server::ParentPolicy::None,
        Duration::from_millis(300),
    );
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(1)).unwrap();
    // Half a header, then silence.
    c.send_raw(&[cmd::CLOSE as u8; 10]).unwrap();
    let err = server.next_result().unwrap_err();
    assert!(
        matches!(&err, SessionError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
}

#[test]
fn a_get_for_a_huge_range_is_answered_with_at_most_1024_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store);
    let data = patterned_pages(0, 1500);
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(8)).unwrap();
    c.add_pages(DstId::pid(8), 0x4000_0000, &data, false)
        .unwrap();
    c.close().unwrap();
    server.next_result().unwrap();

    let mut c = Client::connect(server.addr).unwrap();
    let mut buf = vec![0u8; 1500 * 4096];
    let got = c.get(8, 0x4000_0000, &mut buf).unwrap();
    assert_eq!(got, cryo_pageserver::server::MAX_GET_PAGES);
    assert_eq!(&buf[..1024 * 4096], &data[..1024 * 4096]);
    c.close().unwrap();
    server.next_result().unwrap();
}

#[test]
fn a_connection_that_sends_nothing_ends_quietly_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());

    drop(std::net::TcpStream::connect(server.addr).unwrap());

    assert!(matches!(server.next_result(), Ok(SessionEnd::Closed)));
    assert!(store.list().unwrap().is_empty());
}
