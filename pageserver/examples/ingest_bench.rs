//! Ingest benchmark: stream 1 GiB of pages into a `pageserver` process over loopback.
//!
//! ```text
//! ingest_bench --server target/release/pageserver [--mib 1024] [--zstd-level 1]
//! ```
//!
//! Two workloads, each into a fresh store, each page sent once, timed from connect to the
//! CLOSE reply (so the fsync and index commit are included):
//! - `pattern`: word i of the stream = 0xC0DE000000000000 | i (every page distinct);
//! - `mix`: a Python-heap-like mix — 30 % zero pages, 30 % copies of 64 "library" pages,
//!   30 % object-like pages (small headers, refcounts, pointers), 10 % random bytes.
//!
//! If a `criu` binary can run `criu page-server`, the same stream is sent to it for a ratio;
//! otherwise the reason it could not run is printed.
//!
//! `--connect ADDR [--workload pattern|mix]` sends one workload to an already running server
//! instead (for profiling it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryo_pageserver::client::Client;
use cryo_pageserver::protocol::{DstId, PAGE_SIZE};

const CHUNK_PAGES: usize = 1024;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let server = PathBuf::from(arg("--server").unwrap_or("target/release/pageserver".into()));
    let mib: usize = arg("--mib").map_or(1024, |v| v.parse().expect("--mib N"));
    let level = arg("--zstd-level").unwrap_or("1".into());
    let pages = mib * 256;

    if let Some(addr) = arg("--connect") {
        // Against an already running server (profiling).
        let workload = arg("--workload").unwrap_or("pattern".into());
        let data = if workload == "mix" {
            mix(pages)
        } else {
            pattern(pages)
        };
        let secs = send(addr.parse().expect("--connect ADDR:PORT"), &data);
        let mib_s = data.len() as f64 / (1 << 20) as f64 / secs;
        println!("{workload}: {mib_s:.1} MiB/s");
        return;
    }
    println!("ingest benchmark: {mib} MiB per workload, zstd level {level}, loopback");
    for (name, data) in [("pattern", pattern(pages)), ("mix", mix(pages))] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (child, addr) = spawn_cryo(&server, tmp.path(), &level);
        let server_cpu0 = process_cpu(child.0.id());
        let client_cpu0 = self_cpu();
        let secs = send(addr, &data);
        let server_cpu = process_cpu(child.0.id()) - server_cpu0;
        let client_cpu = self_cpu() - client_cpu0;
        drop(child);
        let stored = dir_size(tmp.path());
        let raw = data.len() as f64;
        let gib = raw / (1u64 << 30) as f64;
        println!(
            "{name:8} cryo: {:8.1} MiB/s  store {:8.1} MiB for {:6.0} MiB raw (x{:.1} smaller)",
            raw / (1 << 20) as f64 / secs,
            stored as f64 / (1 << 20) as f64,
            raw / (1 << 20) as f64,
            raw / stored.max(1) as f64
        );
        println!(
            "{name:8} CPU per GiB: server {:.2} s, client {:.2} s; wall {:.2} s",
            server_cpu / gib,
            client_cpu / gib,
            secs
        );
        match criu_page_server(tmp.path()) {
            Ok((criu, criu_addr)) => {
                let criu_secs = send(criu_addr, &data);
                drop(criu);
                println!(
                    "{name:8} criu: {:8.1} MiB/s  cryo/criu = {:.2}",
                    raw / (1 << 20) as f64 / criu_secs,
                    criu_secs / secs
                );
            }
            Err(why) => println!("{name:8} criu: not compared: {why}"),
        }
    }
}

fn spawn_cryo(server: &Path, store: &Path, level: &str) -> (Proc, SocketAddr) {
    let mut child = Command::new(server)
        .args(["--listen", "127.0.0.1:0", "--zstd-level", level, "--store"])
        .arg(store.join("store"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .parse()
        .unwrap();
    (Proc(child), addr)
}

fn criu_page_server(dir: &Path) -> Result<(Proc, SocketAddr), String> {
    let images = dir.join("criu-images");
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let port = 27000 + (std::process::id() % 1000) as u16;
    let log = images.join("page-server.log");
    let child = Command::new("criu")
        .args([
            "page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-D",
        ])
        .arg(&images)
        .arg("-o")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run criu: {e}"))?;
    let mut proc = Proc(child);
    // criu page-server serves exactly one session, so it cannot be probed: give it a moment
    // and check that it is still alive.
    std::thread::sleep(Duration::from_millis(1500));
    if let Ok(Some(status)) = proc.0.try_wait() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("Error"))
            .unwrap_or("no log line");
        return Err(format!(
            "criu page-server exited ({status}): {}",
            last.trim()
        ));
    }
    Ok((proc, ([127, 0, 0, 1], port).into()))
}

/// Sends `data` as one process's pages; returns seconds from connect to CLOSE reply.
fn send(addr: SocketAddr, data: &[u8]) -> f64 {
    let start = Instant::now();
    let mut c = Client::connect(addr).expect("connect");
    let dst = DstId::pid(4242);
    c.open2(dst).expect("OPEN2");
    for (i, chunk) in data.chunks(CHUNK_PAGES * PAGE_SIZE).enumerate() {
        let vaddr = 0x7f00_0000_0000 + (i * CHUNK_PAGES * PAGE_SIZE) as u64;
        c.add_pages(dst, vaddr, chunk, false).expect("ADD_F");
    }
    c.close().expect("CLOSE");
    start.elapsed().as_secs_f64()
}

fn pattern(pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * PAGE_SIZE);
    for i in 0..(pages * PAGE_SIZE / 8) as u64 {
        out.extend_from_slice(&(0xC0DE_0000_0000_0000u64 | i).to_le_bytes());
    }
    out
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix(pages: usize) -> Vec<u8> {
    let mut seed = 42u64;
    let library: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            (0..PAGE_SIZE / 8)
                .flat_map(|_| splitmix(&mut seed).to_le_bytes())
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(pages * PAGE_SIZE);
    for p in 0..pages as u64 {
        let kind = splitmix(&mut seed) % 10;
        match kind {
            0..=2 => out.resize(out.len() + PAGE_SIZE, 0),
            3..=5 => out.extend_from_slice(&library[(splitmix(&mut seed) % 64) as usize]),
            6..=8 => {
                // 32-byte "objects": refcount, type pointer, value, next pointer.
                for o in 0..(PAGE_SIZE / 32) as u64 {
                    let base = 0x7f3a_0000_0000u64 + (p << 12) + o * 32;
                    out.extend_from_slice(&(1 + (o % 3)).to_le_bytes());
                    out.extend_from_slice(&(0x55d0_0000_1000u64 + (o % 5) * 0x40).to_le_bytes());
                    out.extend_from_slice(&(p * 1000 + o).to_le_bytes());
                    out.extend_from_slice(&(base + 32).to_le_bytes());
                }
            }
            _ => {
                for _ in 0..PAGE_SIZE / 8 {
                    out.extend_from_slice(&splitmix(&mut seed).to_le_bytes());
                }
            }
        }
    }
    out
}

/// user + system CPU seconds of a process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds this process used so far.
fn self_cpu() -> f64 {
    process_cpu(std::process::id())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += dir_size(&e.path());
        } else {
            total += meta.len();
        }
    }
    total
}
