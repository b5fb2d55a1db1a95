//! Helpers shared by the dumper's integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryo_dumper::DumpOptions;
use cryo_fixtures::Workload;

pub fn opts(pid: i32, dir: &Path, leave_running: bool) -> DumpOptions {
    DumpOptions {
        pid,
        dir: dir.to_path_buf(),
        leave_running,
        shell_job: false,
        page_server: None,
        criu_page_server: None,
    }
}

/// /proc/PID/maps without the lines that legitimately change while a process runs.
pub fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

/// fd number → link target of every fd of `pid`.
pub fn fd_list(pid: i32) -> BTreeSet<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

pub fn tracer_of(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("TracerPid:"))
        .unwrap()
        .to_string()
}

/// VMAs as (start, end) from /proc/PID/maps, with vvar + vvar_vclock merged as CRIU does.
pub fn vma_ranges(maps_text: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for line in maps_text.lines() {
        let range = line.split_whitespace().next().unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        let vvar = line.ends_with("[vvar]") || line.ends_with("[vvar_vclock]");
        if let Some(last) = out.last_mut()
            && vvar
            && last.2
            && last.1 == s
        {
            last.1 = e;
            continue;
        }
        out.push((s, e, vvar));
    }
    out.into_iter().map(|(s, e, _)| (s, e)).collect()
}

pub fn crit_decodes_every_image(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pages-") {
            continue;
        }
        let out = Command::new("crit")
            .arg("decode")
            .arg("-i")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crit cannot decode {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn region_start(w: &Workload) -> u64 {
    let line = w
        .wait_for_line(|l| l.starts_with("ready "), Duration::from_secs(1))
        .unwrap();
    let region = cryo_fixtures::field(&line, "region").unwrap();
    u64::from_str_radix(region.trim_start_matches("0x"), 16).unwrap()
}

/// A program started for a test, killed and reaped when dropped (also when the test panics).
pub struct ReadyChild {
    child: std::process::Child,
    /// What the program printed first: it prints once it is ready to be dumped.
    pub first_line: String,
}

impl ReadyChild {
    /// Starts `cmd` with stdout piped and returns once it has printed its first line.
    pub fn spawn(cmd: &mut std::process::Command) -> ReadyChild {
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the test program");
        let mut first_line = String::new();
        let stdout = child.stdout.as_mut().expect("piped stdout");
        let read =
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first_line);
        let ready = ReadyChild { child, first_line };
        read.expect("read the test program's first line");
        ready
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("poll the test program")
            .is_none()
    }
}

impl Drop for ReadyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page server that speaks only CRIU's protocol: like `criu page-server`, it drops a
/// session on an unknown command (cryo's HELLO) and serves the next one. Returns the
/// address and a handle yielding the pages stored by the session that CLOSEd. With
/// `hang_up_after`, it closes the connection once it has read that many page bytes.
pub fn criu_like_server(
    hang_up_after: Option<u64>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<u64>) {
    criu_like_server_with(hang_up_after.map_or(PeerEnd::Close, PeerEnd::HangUpAfter))
}

/// How [`criu_like_server_with`] treats the session's page data.
#[derive(Debug, Clone, Copy)]
pub enum PeerEnd {
    /// Reads everything until CLOSE.
    Close,
    /// Closes the connection once it has read this many page bytes.
    HangUpAfter(u64),
    /// Stops reading at the first page data and keeps the connection open (for 60 s).
    Stall,
}

pub fn criu_like_server_with(end: PeerEnd) -> (std::net::SocketAddr, std::thread::JoinHandle<u64>) {
    use cryo_pageserver::protocol::{Command as Cmd, HEADER_SIZE, parse_header};
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut pages = 0;
            loop {
                let mut head = [0u8; HEADER_SIZE];
                if conn.read_exact(&mut head).is_err() {
                    break;
                }
                let Ok(req) = parse_header(&head) else { break };
                match req.command {
                    Cmd::CryoHello | Cmd::CryoSetParent | Cmd::CryoUseCheckpoint => break,
                    Cmd::Open2 => conn.write_all(&[0]).unwrap(),
                    Cmd::Parent => conn.write_all(&0i32.to_le_bytes()).unwrap(),
                    Cmd::Close => {
                        conn.write_all(&0i32.to_le_bytes()).unwrap();
                        return pages;
                    }
                    _ => {
                        let len = req.payload_len();
                        if let PeerEnd::Stall = end {
                            std::thread::sleep(Duration::from_secs(60));
                            return pages;
                        }
                        if let PeerEnd::HangUpAfter(limit) = end
                            && (pages * 4096 + len) > limit
                        {
                            let mut part = vec![0u8; (limit - pages * 4096) as usize];
                            let _ = conn.read_exact(&mut part);
                            return pages;
                        }
                        let mut data = vec![0u8; len as usize];
                        conn.read_exact(&mut data).unwrap();
                        pages += len / 4096;
                    }
                }
            }
        }
        0
    });
    (addr, handle)
}
