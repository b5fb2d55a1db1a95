//! The real `pageserver` binary killed with SIGKILL: acknowledged checkpoints survive, partial
//! ones are never listed.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::patterned_pages;
use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::DstId;
use cryo_pageserver::store::Store;

/// The server process; killed and reaped on drop, also when a test panics.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn spawn(store: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pageserver"))
            .args(["--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let mut me = Self {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        me.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server announced its address");
        me
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

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
