//! A store on a full file system: CLOSE reports failure, nothing is listed, the server lives.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;
use cryo_pageserver::client::{Client, ClientError};
use cryo_pageserver::protocol::DstId;
use cryo_pageserver::server::SessionError;
use cryo_pageserver::store::{Store, StoreError};

/// A small tmpfs, unmounted on drop (also when the test panics).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn random_pages(pages: usize, mut x: u64) -> Vec<u8> {
    (0..pages * 512)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

#[test]
fn disk_full_fails_the_close_cleanly_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_fs) = SmallFs::mount(tmp.path(), "3m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let store = Store::open(tmp.path()).unwrap();
    let mut server = TestServer::start(store.clone());

    // Random pages do not compress: 8 MiB cannot fit in 3 MiB.
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(1)).unwrap();
    let data = random_pages(2048, 99);
    c.add_pages(DstId::pid(1), 0x1000_0000, &data, false)
        .unwrap();
    let err = c.close().unwrap_err();
    assert!(
        matches!(err, ClientError::CloseStatus { status: -1, .. }),
        "{err}"
    );
    let session = server.next_result().unwrap_err();
    assert!(
        matches!(
            session,
            SessionError::Store {
                source: StoreError::DiskFull { .. },
                ..
            }
        ),
        "{session}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("segments"))
            .unwrap()
            .count(),
        0
    );

    // Space is back once the failed segment is gone: a small checkpoint still commits.
    let mut c = Client::connect(server.addr).unwrap();
    c.open2(DstId::pid(2)).unwrap();
    c.add_pages(DstId::pid(2), 0x1000_0000, &random_pages(16, 5), false)
        .unwrap();
    c.close().unwrap();
    server.next_result().unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    drop(server);
    drop(store);
}
