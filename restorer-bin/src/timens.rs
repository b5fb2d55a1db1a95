//! Keeping the dumped task's monotonic and boot-time clocks continuous.
//!
//! Programs sleep until absolute `CLOCK_MONOTONIC` deadlines (Python's `time.sleep`,
//! timerfds, condition variables). After a restore on another boot — or later on the
//! same one — those deadlines would be far off. When the image set has
//! `timens-0.img` (the clocks at dump time), the restorer enters a new time
//! namespace for its children (`unshare(CLONE_NEWTIME)`) and sets its offsets so
//! that, inside it, both clocks continue from the dumped values.

use std::path::PathBuf;

use cryo_format::ImageSet;
use cryo_format::magic::well_known;
use cryo_format::schema::{TimensEntry, TimespecPair};
use nix::errno::Errno;

/// Errors setting up the time namespace.
#[derive(Debug, thiserror::Error)]
pub enum TimensError {
    #[error("reading timens-0.img")]
    Image(#[from] cryo_format::ImageSetError),
    #[error("reading timens-0.img")]
    Decode(#[from] cryo_format::ImageError),
    #[error("unshare(CLONE_NEWTIME) failed")]
    Unshare(#[source] Errno),
    #[error("writing {path}")]
    Offsets {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const NSEC: i128 = 1_000_000_000;

fn to_ns(t: &TimespecPair) -> i128 {
    t.tv_sec as i128 * NSEC + t.tv_nsec as i128
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * NSEC + ts.tv_nsec as i128
}

/// The `timens_offsets` text that moves the clocks from `now` to `dumped`.
pub fn offsets_text(
    dumped_mono: i128,
    now_mono: i128,
    dumped_boot: i128,
    now_boot: i128,
) -> String {
    let line = |name: &str, off: i128| {
        format!("{name} {} {}\n", off.div_euclid(NSEC), off.rem_euclid(NSEC))
    };
    line("monotonic", dumped_mono - now_mono) + &line("boottime", dumped_boot - now_boot)
}

/// Puts the restorer's future children into a time namespace continuing the dumped
/// clocks; does nothing when the set has no timens image.
pub fn enter(set: &ImageSet) -> Result<bool, TimensError> {
    let image = set.image_or_empty("timens-0.img", well_known::timens())?;
    let entries: Vec<TimensEntry> = image.decode_all()?;
    let Some(entry) = entries.first() else {
        return Ok(false);
    };
    // SAFETY: unshare only changes the namespace of the restorer's future children.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } < 0 {
        return Err(TimensError::Unshare(Errno::last()));
    }
    let text = offsets_text(
        to_ns(&entry.monotonic),
        now_ns(libc::CLOCK_MONOTONIC),
        to_ns(&entry.boottime),
        now_ns(libc::CLOCK_BOOTTIME),
    );
    let path = PathBuf::from("/proc/self/timens_offsets");
    std::fs::write(&path, &text).map_err(|source| TimensError::Offsets { path, source })?;
    tracing::debug!(offsets = text.trim(), "time namespace entered");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_offsets_keep_nanoseconds_positive() {
        let t = offsets_text(NSEC, 2 * NSEC + 1, 5 * NSEC, 5 * NSEC);
        assert_eq!(t, "monotonic -2 999999999\nboottime 0 0\n");
    }

    #[test]
    fn forward_offsets() {
        let t = offsets_text(4332 * NSEC + 7, 1000 * NSEC, 4332 * NSEC, 1000 * NSEC);
        assert_eq!(t, "monotonic 3332 7\nboottime 3332 0\n");
    }
}
