//! Staying with the restored tree: the restorer is the root's parent, waits for it,
//! and leaves the way it left — the same exit code, or death by the same signal.
//!
//! The restored root lives in its own session, so a Ctrl-C or a `kill` aimed at the
//! restorer would otherwise never reach it: while waiting, SIGINT, SIGTERM, SIGHUP
//! and SIGQUIT are forwarded to the root.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals forwarded to the root while the restorer waits.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

static ROOT: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let root = ROOT.load(Ordering::Relaxed);
    if root > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(root, sig) };
    }
}

/// Holds the forwarded signals back while the tree is being restored, so that one
/// arriving before the restorer waits is forwarded then, not lost.
pub fn hold_forwarded_signals() {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ok();
}

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
    ROOT.store(root, Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        unsafe { signal(sig, SigHandler::Handler(forward)) }?;
    }
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
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
