//! Terminals of a shell job: `tty-info.img` entries.
//!
//! With `--shell-job`, an fd on a terminal is dumped as a `TTY` file whose `tty_info`
//! records the terminal's kind, session and foreground group, termios and window size
//! (read through a second open of `/proc/PID/fd/N`, without becoming its controlling
//! process). On restore, the restorer's own terminal takes its place, as with CRIU.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use cryo_format::schema::{TermiosEntry, TtyInfoEntry, TtyPtyEntry, TtyType, WinsizeEntry};

use crate::files::FilesError;

/// The `tty_info_entry` with id `id` for the terminal `rdev` behind fd `fd` of `pid`.
pub fn tty_info(pid: i32, fd: i32, rdev: u64, id: u32) -> Result<TtyInfoEntry, FilesError> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let kind = match (major, minor) {
        (136..=143, _) => TtyType::Pty,
        (5, 0) => TtyType::Ctty,
        (5, 1) => TtyType::Console,
        (4, 0..=63) => TtyType::Vt,
        _ => TtyType::Serial,
    };
    let stat_err = |source| FilesError::Proc {
        pid,
        fd,
        what: "stat",
        source,
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(stat_err)?;
    // Fields after the comm: state ppid pgrp session tty_nr tpgid.
    let fields: Vec<i64> = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let sid = fields.get(2).copied().unwrap_or(0);
    let tpgid = fields.get(4).copied().unwrap_or(0);
    let (termios, winsize) = tty_settings(pid, fd)?;
    Ok(TtyInfoEntry {
        id,
        r#type: kind as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: sid.max(0) as u32,
        pgrp: tpgid.max(0) as u32,
        rdev: rdev as u32,
        termios: Some(termios),
        termios_locked: None,
        winsize: Some(winsize),
        pty: (kind == TtyType::Pty).then(|| TtyPtyEntry {
            index: minor + major.saturating_sub(136) * 256,
        }),
        ..TtyInfoEntry::default()
    })
}

/// Termios and window size of the terminal behind fd `fd` of `pid`.
pub fn tty_settings(pid: i32, fd: i32) -> Result<(TermiosEntry, WinsizeEntry), FilesError> {
    let err = |source| FilesError::Proc {
        pid,
        fd,
        what: "terminal settings",
        source,
    };
    let tty = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(err)?;
    // SAFETY: termios is plain integers; all-zero is valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS fills the termios we own.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TCGETS, &mut t) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we own.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // The kernel's termios has 19 control characters.
    let termios = TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line as u32,
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc[..19].iter().map(|&c| c as u32).collect(),
    };
    let winsize = WinsizeEntry {
        ws_row: ws.ws_row as u32,
        ws_col: ws.ws_col as u32,
        ws_xpixel: ws.ws_xpixel as u32,
        ws_ypixel: ws.ws_ypixel as u32,
    };
    Ok((termios, winsize))
}

/// Terminal devices: pty slaves (136-143), /dev/tty* and consoles (4, 5).
pub fn is_tty(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_majors_are_recognised() {
        assert!(is_tty(libc::makedev(136, 3)));
        assert!(is_tty(libc::makedev(5, 0)));
        assert!(!is_tty(libc::makedev(1, 3)), "/dev/null is not a terminal");
    }
}
