//! Files on anonymous inodes: eventfd, timerfd, signalfd and epoll instances.
//!
//! None of them has a path to reopen: each is made again by its own system call from
//! what files.img recorded, in the restorer, and inherited by the tree like any other
//! file (see `files`).
//!
//! - An eventfd gets its counter back (written after creation, as `eventfd(2)` takes
//!   only 32 bits). EFD_SEMAPHORE is not in CRIU's image, so a semaphore eventfd comes
//!   back as a plain one.
//! - A timerfd is armed with the time that was left to its next expiry and its
//!   interval. Expirations pending at the dump (`ticks`) need `TFD_IOC_SET_TICKS`
//!   (a kernel with CONFIG_CHECKPOINT_RESTORE); without it they are lost, with a
//!   warning.
//! - A signalfd gets its signal mask.
//! - An epoll instance is created empty: its registrations are keyed by the watched
//!   fd's number in the process, so they are made inside the restored process once its
//!   fd table is in place (see `spawn`), by the process `plan` assigns them to.
//!
//! Of the status flags only `O_NONBLOCK` is restored (with `F_SETFL`); the access
//! mode of these files is always read-write.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cryo_format::schema::FileEntry;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// `TFD_IOC_SET_TICKS`, `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::c_ulong =
    nix::request_code_write!(b'T', 0, std::mem::size_of::<u64>()) as libc::c_ulong;

const _: () = assert!(TFD_IOC_SET_TICKS == 0x4008_5400);
const _: () = assert!(std::mem::size_of::<libc::epoll_event>() == 12);

/// `timerfd_settime` flags (linux/timerfd.h).
const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// The kernel adds these to every registration; they are not asked for.
const EPOLL_IMPLICIT: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

const NSEC: u64 = 1_000_000_000;

/// Failure to make one anonymous file again.
#[derive(Debug, thiserror::Error)]
#[error("file id {id} ({kind}): {step} failed")]
pub struct AnonFdError {
    pub id: u32,
    pub kind: &'static str,
    pub step: &'static str,
    #[source]
    pub source: Errno,
}

/// A time as CRIU stores a timerfd's value and interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    pub sec: u64,
    pub nsec: u64,
}

impl Timespec {
    fn is_zero(self) -> bool {
        self.sec == 0 && self.nsec == 0
    }

    fn to_libc(self) -> libc::timespec {
        libc::timespec {
            tv_sec: self.sec as libc::time_t,
            tv_nsec: self.nsec as libc::c_long,
        }
    }
}

/// A timerfd as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerfdSpec {
    pub flags: u32,
    pub clockid: i32,
    /// Expirations not read yet.
    pub ticks: u64,
    pub settime_flags: u32,
    /// Time left to the next expiry (relative, whatever `settime_flags` say).
    pub value: Timespec,
    pub interval: Timespec,
}

/// One registration of an epoll instance, as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    /// The watched fd's number in the process that registered it.
    pub fd: i32,
    /// As /proc fdinfo shows them (with the implicit EPOLLERR|EPOLLHUP).
    pub events: u32,
    pub data: u64,
}

/// An anonymous-inode file of files.img.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonFile {
    Eventfd {
        flags: u32,
        counter: u64,
    },
    Timerfd(TimerfdSpec),
    Signalfd {
        flags: u32,
        sigmask: u64,
    },
    Eventpoll {
        flags: u32,
        targets: Vec<EpollTarget>,
    },
}

impl AnonFile {
    /// The anonymous file `entry` describes, if it is one.
    pub fn decode(entry: &FileEntry) -> Option<AnonFile> {
        if let Some(e) = &entry.efd {
            return Some(AnonFile::Eventfd {
                flags: e.flags,
                counter: e.counter,
            });
        }
        if let Some(t) = &entry.tfd {
            return Some(AnonFile::Timerfd(TimerfdSpec {
                flags: t.flags,
                clockid: t.clockid as i32,
                ticks: t.ticks,
                settime_flags: t.settime_flags,
                value: Timespec {
                    sec: t.vsec,
                    nsec: t.vnsec,
                },
                interval: Timespec {
                    sec: t.isec,
                    nsec: t.insec,
                },
            }));
        }
        if let Some(s) = &entry.sgfd {
            return Some(AnonFile::Signalfd {
                flags: s.flags,
                sigmask: s.sigmask,
            });
        }
        let ep = entry.epfd.as_ref()?;
        let targets = ep
            .tfd
            .iter()
            .map(|t| EpollTarget {
                fd: t.tfd as i32,
                events: t.events,
                data: t.data,
            })
            .collect();
        Some(AnonFile::Eventpoll {
            flags: ep.flags,
            targets,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AnonFile::Eventfd { .. } => "eventfd",
            AnonFile::Timerfd(_) => "timerfd",
            AnonFile::Signalfd { .. } => "signalfd",
            AnonFile::Eventpoll { .. } => "epoll instance",
        }
    }

    /// Makes the file again, close-on-exec, for file id `id`.
    pub fn open(&self, id: u32) -> Result<OwnedFd, AnonFdError> {
        let kind = self.kind();
        let err = |step| {
            move |source| AnonFdError {
                id,
                kind,
                step,
                source,
            }
        };
        let nonblock_cloexec = libc::O_NONBLOCK | libc::O_CLOEXEC;
        let (fd, flags) = match self {
            AnonFile::Eventfd { flags, counter } => {
                // SAFETY: eventfd returns a new descriptor or -1.
                let fd =
                    owned(unsafe { libc::eventfd(0, nonblock_cloexec) }).map_err(err("eventfd"))?;
                if *counter != 0 {
                    let bytes = counter.to_ne_bytes();
                    nix::unistd::write(&fd, &bytes).map_err(err("writing the counter"))?;
                }
                (fd, *flags)
            }
            AnonFile::Timerfd(spec) => (open_timerfd(id, spec)?, spec.flags),
            AnonFile::Signalfd { flags, sigmask } => {
                // SAFETY: signalfd4 reads the 8-byte mask and returns a new descriptor.
                let ret = unsafe {
                    libc::syscall(
                        libc::SYS_signalfd4,
                        -1,
                        sigmask as *const u64,
                        8usize,
                        nonblock_cloexec,
                    )
                };
                (owned(ret as i32).map_err(err("signalfd4"))?, *flags)
            }
            AnonFile::Eventpoll { flags, .. } => {
                // SAFETY: epoll_create1 returns a new descriptor or -1.
                let fd = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
                    .map_err(err("epoll_create1"))?;
                (fd, *flags)
            }
        };
        let status = OFlag::from_bits_retain(status_flags(flags));
        fcntl(&fd, FcntlArg::F_SETFL(status)).map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}

fn open_timerfd(id: u32, spec: &TimerfdSpec) -> Result<OwnedFd, AnonFdError> {
    let err = |step| {
        move |source| AnonFdError {
            id,
            kind: "timerfd",
            step,
            source,
        }
    };
    let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
    // SAFETY: timerfd_create returns a new descriptor or -1.
    let fd = owned(unsafe { libc::timerfd_create(spec.clockid, flags) })
        .map_err(err("timerfd_create"))?;

    let mut value = arming_value(spec.value, spec.interval);
    let absolute = spec.settime_flags & TFD_TIMER_ABSTIME != 0 && !value.is_zero();
    if absolute {
        value = later_by(now(spec.clockid).map_err(err("clock_gettime"))?, value);
    }
    let settime_flags = match absolute {
        true => spec.settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
        false => 0,
    };
    let its = libc::itimerspec {
        it_interval: spec.interval.to_libc(),
        it_value: value.to_libc(),
    };
    // SAFETY: timerfd_settime reads `its`; no old value is asked for.
    let ret = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            settime_flags as i32,
            &its,
            std::ptr::null_mut(),
        )
    };
    Errno::result(ret).map_err(err("timerfd_settime"))?;

    // After settime, which clears them.
    if spec.ticks > 0 {
        // SAFETY: the request reads one u64 from the pointer.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &spec.ticks) };
        if let Err(e) = Errno::result(ret) {
            tracing::warn!(
                file_id = id,
                ticks = spec.ticks,
                error = %e,
                "pending timerfd expirations are lost (TFD_IOC_SET_TICKS failed)"
            );
        }
    }
    Ok(fd)
}

/// A descriptor a system call returned, or its error.
fn owned(ret: i32) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(ret)?;
    // SAFETY: the system call just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn now(clockid: i32) -> Result<Timespec, Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    Errno::result(unsafe { libc::clock_gettime(clockid, &mut ts) })?;
    Ok(Timespec {
        sec: ts.tv_sec as u64,
        nsec: ts.tv_nsec as u64,
    })
}

/// The status flags of a dumped open-flags word that `F_SETFL` restores.
pub fn status_flags(flags: u32) -> i32 {
    flags as i32 & libc::O_NONBLOCK
}

/// The events to ask `EPOLL_CTL_ADD` for, for a dumped registration: the dumped ones
/// without EPOLLERR|EPOLLHUP, which the kernel adds to every registration itself.
pub fn registration_events(dumped: u32) -> u32 {
    dumped & !EPOLL_IMPLICIT
}

/// The `it_value` that re-arms a timer as it was dumped: the time that was left,
/// except that a periodic timer with nothing left gets 1 ns (a zero value would
/// disarm it). A zero value and interval is a disarmed timer.
pub fn arming_value(left: Timespec, interval: Timespec) -> Timespec {
    if left.is_zero() && !interval.is_zero() {
        Timespec { sec: 0, nsec: 1 }
    } else {
        left
    }
}

/// `now` + `left`, normalised.
fn later_by(now: Timespec, left: Timespec) -> Timespec {
    let nsec = now.nsec + left.nsec;
    Timespec {
        sec: now.sec + left.sec + nsec / NSEC,
        nsec: nsec % NSEC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nonblock_is_set_again() {
        assert_eq!(status_flags(0o4002), libc::O_NONBLOCK);
        assert_eq!(status_flags(0o2), 0);
        assert_eq!(
            status_flags(0o2004002),
            libc::O_NONBLOCK,
            "cloexec is the fd's"
        );
    }

    #[test]
    fn implicit_epoll_events_are_not_asked_for() {
        let in_err_hup = (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        assert_eq!(in_err_hup, 25);
        assert_eq!(registration_events(25), libc::EPOLLIN as u32);
        let et_pri = (libc::EPOLLET | libc::EPOLLPRI) as u32;
        assert_eq!(registration_events(0x8000_001a), et_pri);
    }

    #[test]
    fn a_periodic_timer_with_nothing_left_stays_armed() {
        let zero = Timespec::default();
        let period = Timespec {
            sec: 0,
            nsec: 100_000_000,
        };
        let left = Timespec {
            sec: 2,
            nsec: 28_140_253,
        };
        assert_eq!(arming_value(left, period), left);
        assert_eq!(arming_value(zero, period), Timespec { sec: 0, nsec: 1 });
        assert_eq!(arming_value(zero, zero), zero, "disarmed stays disarmed");
        assert_eq!(arming_value(left, zero), left, "one-shot");
    }

    #[test]
    fn absolute_deadline_carries_nanoseconds() {
        let now = Timespec {
            sec: 10,
            nsec: 900_000_000,
        };
        let left = Timespec {
            sec: 1,
            nsec: 200_000_000,
        };
        assert_eq!(
            later_by(now, left),
            Timespec {
                sec: 12,
                nsec: 100_000_000
            }
        );
    }

    #[test]
    fn ticks_ioctl_is_the_kernels() {
        assert_eq!(TFD_IOC_SET_TICKS, 0x4008_5400);
    }

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn eventfd_and_signalfd_come_back_with_their_state() {
        let efd = AnonFile::Eventfd {
            flags: 0o4002,
            counter: 1 << 40,
        }
        .open(1)
        .unwrap();
        let info = fdinfo(&efd);
        assert!(info.contains("flags:\t02004002"), "{info}");
        assert!(
            info.lines()
                .any(|l| l.split_whitespace().eq(["eventfd-count:", "10000000000"])),
            "{info}"
        );

        let sfd = AnonFile::Signalfd {
            flags: 0o2,
            sigmask: 0x200,
        }
        .open(2)
        .unwrap();
        let info = fdinfo(&sfd);
        assert!(info.contains("flags:\t02000002"), "{info}");
        assert!(info.contains("sigmask:\t0000000000000200"), "{info}");
    }

    #[test]
    fn timerfd_is_armed_with_what_was_left() {
        let spec = TimerfdSpec {
            flags: 0o4002,
            clockid: libc::CLOCK_MONOTONIC,
            ticks: 0,
            settime_flags: 0,
            value: Timespec { sec: 30, nsec: 0 },
            interval: Timespec { sec: 60, nsec: 5 },
        };
        let fd = AnonFile::Timerfd(spec).open(3).unwrap();
        let info = fdinfo(&fd);
        assert!(info.contains("flags:\t02004002"), "{info}");
        assert!(info.contains("it_interval: (60, 5)"), "{info}");
        assert!(info.contains("it_value: (29, ") || info.contains("it_value: (30, 0)"));
    }
}
