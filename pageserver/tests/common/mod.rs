//! Helpers shared by the page-server integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A `pageserver serve` child process; killed (SIGKILL) and reaped on drop, also when a test
/// panics.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    pub fn spawn(store: &Path) -> Self {
        Self::spawn_with(store, &[])
    }

    /// Starts the server on an ephemeral port with extra arguments; waits (bounded) for the
    /// address it announces on stdout. Its stderr (logs) is discarded.
    pub fn spawn_with(store: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pageserver"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(extra)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Sends `signal` (the process is still ours: it has not been reaped).
    pub fn signal(&mut self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid > 0");
        rustix::process::kill_process(pid, signal).expect("signal the server");
    }

    /// Waits up to `limit` for the server to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `pageserver ARGS --store STORE` to completion, bounded by a watchdog that kills it
/// after 30 s.
pub fn run_pageserver(args: &[&str], store: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_pageserver"))
        .args(args)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            // Still running (not yet reaped, so the pid is still the child's).
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    out
}

/// Checkpoint ids printed by `pageserver list` (the first column after the header).
pub fn listed_ids(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}
