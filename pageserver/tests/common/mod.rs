//! Helpers shared by the page-server integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cryo_pageserver::server::{self, ParentPolicy, ServerConfig, SessionEnd, SessionError};
use cryo_pageserver::store::Store;
use tokio::sync::mpsc;

/// A server running on its own tokio runtime; every session's result is reported.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    results: mpsc::UnboundedReceiver<Result<SessionEnd, SessionError>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn start(store: Arc<Store>) -> Self {
        Self::start_with(store, ParentPolicy::None)
    }

    pub fn start_with(store: Arc<Store>, parent_policy: ParentPolicy) -> Self {
        Self::start_configured(store, parent_policy, Duration::from_secs(20))
    }

    pub fn start_configured(
        store: Arc<Store>,
        parent_policy: ParentPolicy,
        idle_timeout: Duration,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = Arc::new(ServerConfig {
            store: Arc::clone(&store),
            parent_policy,
            serve_checkpoint: None,
            idle_timeout,
        });
        let (tx, results) = mpsc::unbounded_channel();
        let listener = rt
            .block_on(server::bind("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let config = Arc::clone(&config);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let r = server::handle_connection(stream, peer, &config).await;
                    let _ = tx.send(r);
                });
            }
        });
        Self {
            addr,
            store,
            results,
            rt: Some(rt),
        }
    }

    /// The next finished session (bounded wait).
    pub fn next_result(&mut self) -> Result<SessionEnd, SessionError> {
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), self.results.recv())
                .await
                .expect("a session ended within 30 s")
                .expect("server loop alive")
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/criu-page-server")
        .join(name)
}

/// The benchmark's page pattern: word i of the stream = 0xC0DE000000000000 | i.
pub fn patterned_pages(first_word: u64, pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * 4096);
    for i in 0..(pages * 512) as u64 {
        out.extend_from_slice(&(0xC0DE_0000_0000_0000u64 | (first_word + i)).to_le_bytes());
    }
    out
}
