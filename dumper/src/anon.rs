//! Event files: eventfd, timerfd, signalfd and epoll fds, read from `/proc/PID/fdinfo/FD`
//! into their `files.img` entries (the fields CRIU writes for them).
//!
//! What the kernel shows there: an eventfd's count (hex); a timerfd's clock, unread
//! expirations, settime flags, time to the next expiry (`it_value`, relative) and
//! interval; a signalfd's mask (hex); an epoll fd's registrations, one `tfd:` line each
//! with the target's fd number in the owning process, the events (hex, with the
//! implicit `EPOLLERR | EPOLLHUP`), the user data (hex), and the target's inode and
//! device (hex).

use cryo_format::schema::{
    EventfdFileEntry, EventpollFileEntry, EventpollTfdEntry, FownEntry, SignalfdEntry, TimerfdEntry,
};

/// The first whitespace-separated word after `name` on a line of `info`.
fn word<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.split_whitespace().next())
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v, 16).ok()
}

/// `(sec, nsec)` of a line like `it_value: (0, 89121279)`.
fn timespec(info: &str, name: &str) -> Option<(u64, u64)> {
    let rest = info.lines().find_map(|l| l.strip_prefix(name))?;
    let (sec, nsec) = rest
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((sec.trim().parse().ok()?, nsec.trim().parse().ok()?))
}

/// An eventfd; `None` names the field that could not be read.
pub fn eventfd(
    id: u32,
    flags: u32,
    fown: FownEntry,
    info: &str,
) -> Result<EventfdFileEntry, &'static str> {
    let counter = word(info, "eventfd-count:")
        .and_then(hex)
        .ok_or("eventfd-count")?;
    Ok(EventfdFileEntry {
        id,
        flags,
        fown,
        counter,
    })
}

/// A timerfd.
pub fn timerfd(
    id: u32,
    flags: u32,
    fown: FownEntry,
    info: &str,
) -> Result<TimerfdEntry, &'static str> {
    let clockid = word(info, "clockid:")
        .and_then(|v| v.parse().ok())
        .ok_or("clockid")?;
    let ticks = word(info, "ticks:")
        .and_then(|v| v.parse().ok())
        .ok_or("ticks")?;
    // Printed in octal.
    let settime_flags = word(info, "settime flags:")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or("settime flags")?;
    let (vsec, vnsec) = timespec(info, "it_value:").ok_or("it_value")?;
    let (isec, insec) = timespec(info, "it_interval:").ok_or("it_interval")?;
    Ok(TimerfdEntry {
        id,
        flags,
        fown,
        clockid,
        ticks,
        settime_flags,
        vsec,
        vnsec,
        isec,
        insec,
    })
}

/// A signalfd.
pub fn signalfd(
    id: u32,
    flags: u32,
    fown: FownEntry,
    info: &str,
) -> Result<SignalfdEntry, &'static str> {
    let sigmask = word(info, "sigmask:").and_then(hex).ok_or("sigmask")?;
    Ok(SignalfdEntry {
        id,
        flags,
        fown,
        sigmask,
    })
}

/// An epoll fd with its registrations.
pub fn eventpoll(
    id: u32,
    flags: u32,
    fown: FownEntry,
    info: &str,
) -> Result<EventpollFileEntry, &'static str> {
    let tfd = info
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(registration)
        .collect::<Option<Vec<_>>>()
        .ok_or("tfd")?;
    Ok(EventpollFileEntry {
        id,
        flags,
        fown,
        tfd,
    })
}

/// One `tfd: N events: X data: Y pos:P ino:I sdev:D` line.
fn registration(line: &str) -> Option<EventpollTfdEntry> {
    let value = |name: &str| {
        let at = line.find(name)? + name.len();
        line[at..].split_whitespace().next()
    };
    Some(EventpollTfdEntry {
        // CRIU leaves the target's file id 0 here: the fd number names it.
        id: 0,
        tfd: value("tfd:")?.parse().ok()?,
        events: hex(value("events:")?)? as u32,
        data: hex(value("data:")?)?,
        dev: Some(hex(value("sdev:")?)? as u32),
        inode: Some(hex(value("ino:")?)?),
        pos: Some(value("pos:")?.parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\n";

    #[test]
    fn eventfd_count_is_hex() {
        let info = format!("{HEAD}eventfd-count:               1f\neventfd-id: 1\n");
        let e = eventfd(7, 0o4002, FownEntry::default(), &info).unwrap();
        assert_eq!((e.id, e.counter), (7, 31));
        assert_eq!(
            eventfd(7, 0, FownEntry::default(), HEAD).unwrap_err(),
            "eventfd-count"
        );
    }

    #[test]
    fn timerfd_fields_come_from_their_lines() {
        let info = format!(
            "{HEAD}clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (2, 89121279)\n\
             it_interval: (0, 100000000)\n"
        );
        let t = timerfd(8, 0o4002, FownEntry::default(), &info).unwrap();
        assert_eq!((t.clockid, t.ticks, t.settime_flags), (1, 3, 1));
        assert_eq!(
            (t.vsec, t.vnsec, t.isec, t.insec),
            (2, 89121279, 0, 100000000)
        );
        let broken = info.replace("it_interval: (0, 100000000)", "it_interval: 0");
        assert_eq!(
            timerfd(8, 0, FownEntry::default(), &broken).unwrap_err(),
            "it_interval"
        );
    }

    #[test]
    fn signalfd_mask_is_hex() {
        let info = format!("{HEAD}sigmask:\t0000000000000200\n");
        assert_eq!(
            signalfd(9, 0, FownEntry::default(), &info).unwrap().sigmask,
            0x200
        );
    }

    #[test]
    fn epoll_registrations_keep_fd_events_data_and_target() {
        let info = format!(
            "{HEAD}tfd:        6 events:       19 data:                2  pos:0 ino:40e sdev:10\n\
             tfd:        4 events: 8000001a data:  ffffffffffffffff  pos:0 ino:40e sdev:10\n"
        );
        let ep = eventpoll(10, 2, FownEntry::default(), &info).unwrap();
        let got: Vec<_> = ep
            .tfd
            .iter()
            .map(|t| (t.tfd, t.events, t.data, t.inode, t.dev))
            .collect();
        assert_eq!(
            got,
            [
                (6, 0x19, 2, Some(0x40e), Some(0x10)),
                (4, 0x8000_001a, u64::MAX, Some(0x40e), Some(0x10))
            ]
        );
        let broken = format!("{HEAD}tfd: 6 events: zz data: 2 pos:0 ino:40e sdev:10\n");
        assert_eq!(
            eventpoll(10, 2, FownEntry::default(), &broken).unwrap_err(),
            "tfd"
        );
    }
}
