//! Staying with the restored tree: the restorer is the root's parent, waits for it,
//! and leaves the way it left — the same exit code, or death by the same signal.

use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// Writes `pid` to `path` (whole file, then renamed into place).
pub fn write_pidfile(path: &Path, pid: i32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    write!(f, "{pid}")?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Waits for the root and mirrors its end on this process. Returns only on error.
pub fn wait_and_mirror(root: i32) -> Result<(), Errno> {
    loop {
        match waitpid(Pid::from_raw(root), None) {
            Ok(WaitStatus::Exited(_, code)) => {
                tracing::info!(root, code, "restored root exited");
                std::process::exit(code);
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                tracing::info!(root, signal = sig as i32, "restored root was killed");
                die_by(sig);
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn die_by(sig: Signal) -> ! {
    // SAFETY: restoring the default action right before raising; nothing else runs.
    unsafe { signal(sig, SigHandler::SigDfl) }.ok();
    let mut set = SigSet::empty();
    set.add(sig);
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).ok();
    nix::sys::signal::raise(sig).ok();
    std::process::exit(128 + sig as i32)
}
