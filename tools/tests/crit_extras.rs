//! Images with extra payloads and pretty-printed socket fields (none of which the CRIU
//! fixtures contain): imgtool round-trips them byte for byte, and its `decode --pretty`
//! equals what python crit prints for the same bytes.

mod crit_common;

use std::path::Path;

use crit_common::*;

const CRIT: &str = "/usr/bin/crit";

/// Hand-written plain-JSON images: (name, document).
const DOCS: &[(&str, &str)] = &[
    (
        "files",
        r#"{"magic": "FILES", "entries": [{"type": "UNIXSK", "id": 1, "usk": {"id": 1, "ino": 99, "type": 1, "state": 10, "flags": 2048, "uflags": 0, "backlog": 5, "peer": 0, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}, "opts": {"so_sndbuf": 1, "so_rcvbuf": 2, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0, "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}, "name": "/run/x=00.sock=FF"}}, {"type": "INETSK", "id": 2, "isk": {"id": 2, "ino": 5, "family": 2, "type": 1, "proto": 6, "state": 10, "src_port": 80, "dst_port": 0, "flags": 2048, "backlog": 128, "src_addr": [16777343], "dst_addr": [0], "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}, "opts": {"so_sndbuf": 1, "so_rcvbuf": 2, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0, "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0, "reuseaddr": true}}}, {"type": "INETSK", "id": 3, "isk": {"id": 3, "ino": 6, "family": 10, "type": 2, "proto": 17, "state": 7, "src_port": 53, "dst_port": 0, "flags": 0, "backlog": 0, "src_addr": [0, 0, 0, 16777216], "dst_addr": [0,0,0,0], "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}, "opts": {"so_sndbuf": 1, "so_rcvbuf": 2, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0, "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}}}]}"#,
    ),
    (
        "ghost",
        r#"{"magic": "GHOST_FILE", "entries": [{"uid": 0, "gid": 0, "mode": 33188, "dev": 8388609, "ino": 1234, "rdev": 0, "atim": {"tv_sec": 1, "tv_usec": 2}, "mtim": {"tv_sec": 3, "tv_usec": 4}, "size": 5, "extra": "aGVsbG8=\n"}]}"#,
    ),
    (
        "ghostc",
        r#"{"magic": "GHOST_FILE", "entries": [{"uid": 0, "gid": 0, "mode": 33188, "chunks": true, "size": 8192}, {"len": 3, "off": 0, "extra": "YWJj\n"}, {"len": 2, "off": 4096, "extra": "ZGU=\n"}]}"#,
    ),
    (
        "msg",
        r#"{"magic": "IPCNS_MSG", "entries": [{"desc": {"key": 1, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 438, "id": 0}, "qbytes": 16384, "qnum": 2, "extra": [{"mtype": 1, "msize": 3}, "YWJj\n", {"mtype": 2, "msize": 9}, "YWJjZGVmZ2hp\n"]}]}"#,
    ),
    (
        "sem",
        r#"{"magic": "IPCNS_SEM", "entries": [{"desc": {"key": 1, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 438, "id": 0}, "nsems": 3, "extra": [1, 2, 65535]}]}"#,
    ),
    (
        "shm",
        r#"{"magic": "IPCNS_SHM", "entries": [{"desc": {"key": 1, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 438, "id": 0}, "size": 5, "extra": "aGVsbG8=\n"}]}"#,
    ),
    (
        "sk",
        r#"{"magic": "SK_QUEUES", "entries": [{"id_for": 7, "length": 5, "extra": "aGVsbG8=\n"}, {"id_for": 8, "length": 0, "scm": [{"type": 1, "rights": [3, 4]}], "extra": ""}]}"#,
    ),
    (
        "tcp",
        r#"{"magic": "TCP_STREAM", "entries": [{"inq_len": 3, "inq_seq": 100, "outq_len": 2, "outq_seq": 200, "opt_mask": 5, "snd_wscale": 7, "mss_clamp": 1460, "rcv_wscale": 7, "timestamp": 1234, "extra": {"inq": "YWJj\n", "outq": "ZGU=\n"}}]}"#,
    ),
    (
        "tty",
        r#"{"magic": "TTY_DATA", "entries": [{"tty_id": 1, "data": "bHMK\n"}]}"#,
    ),
];

#[test]
fn extra_payloads_round_trip_and_render_like_crit() {
    let crit = Path::new(CRIT).exists();
    if !crit {
        eprintln!("{CRIT} is not installed: comparing round trips only");
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, doc) in DOCS {
        let img = dir.path().join(format!("{name}.img"));
        let pretty = dir.path().join(format!("{name}.json"));
        let again = dir.path().join(format!("{name}.2.img"));
        imgtool_ok(
            &["encode".as_ref(), "-o".as_ref(), img.as_os_str()],
            Some(doc.as_bytes()),
        );
        imgtool_ok(
            &[
                "decode".as_ref(),
                "--pretty".as_ref(),
                "-i".as_ref(),
                img.as_os_str(),
                "-o".as_ref(),
                pretty.as_os_str(),
            ],
            None,
        );
        imgtool_ok(
            &[
                "encode".as_ref(),
                "-i".as_ref(),
                pretty.as_os_str(),
                "-o".as_ref(),
                again.as_os_str(),
            ],
            None,
        );
        assert!(
            std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap(),
            "{name}: pretty JSON does not re-encode to the same bytes"
        );

        // The plain rendering gives back the document we started from.
        let plain = imgtool_ok(&["decode".as_ref(), "-i".as_ref(), img.as_os_str()], None).stdout;
        let plain: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        let original: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert_eq!(plain, original, "{name}");

        if crit {
            let args = [
                "decode".as_ref(),
                "--pretty".as_ref(),
                "-i".as_ref(),
                img.as_os_str(),
            ];
            let theirs = run_program(Path::new(CRIT), &args, None);
            assert!(
                theirs.status.success(),
                "crit cannot decode {name}: {}",
                String::from_utf8_lossy(&theirs.stderr)
            );
            let mut ours = std::fs::read(&pretty).unwrap();
            ours.push(b'\n');
            assert!(
                ours == theirs.stdout,
                "{name}: imgtool and crit differ:\n{}\n---\n{}",
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs.stdout)
            );
        }
    }
}

#[test]
fn nopl_summarises_payloads_and_hides_ghost_contents() {
    let dir = tempfile::tempdir().unwrap();
    for (name, doc) in DOCS {
        let img = dir.path().join(format!("{name}.img"));
        imgtool_ok(
            &["encode".as_ref(), "-o".as_ref(), img.as_os_str()],
            Some(doc.as_bytes()),
        );
        let shown = imgtool_ok(&["show".as_ref(), "--nopl".as_ref(), img.as_os_str()], None).stdout;
        let shown: serde_json::Value = serde_json::from_slice(&shown).unwrap();
        for entry in shown["entries"].as_array().unwrap() {
            match (name.starts_with("ghost"), entry.get("extra")) {
                (true, extra) => assert!(extra.is_none(), "{name}: ghost contents shown"),
                (false, Some(extra)) => {
                    let text = extra.as_str().unwrap();
                    assert!(
                        text.starts_with("... <") && text.ends_with("B>"),
                        "{name}: {text}"
                    )
                }
                (false, None) => {}
            }
        }
    }
}
