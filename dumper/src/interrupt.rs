//! SIGINT, SIGTERM and SIGHUP during a dump: they must not kill the dumper while the tree
//! is frozen with injected registers and fds in it (the tree would resume in the middle
//! of a remote call and crash). [`install`] makes them set a flag instead; the dump
//! checks [`requested`] between steps and then fails like any other error, which cures
//! the parasite, detaches the tree as it was and removes what it wrote. The handlers
//! are installed without `SA_RESTART`, so a wait for a tracee's remote syscall wakes
//! up, and [`crate::ptrace::wait`] interrupts a remote syscall that blocks (a stalled
//! page server).

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signal that asked the dump to stop, 0 if none.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(sig: libc::c_int) {
    REQUESTED.store(sig, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP ask the dump to stop instead of killing the dumper.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// The signal that asked the dump to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
