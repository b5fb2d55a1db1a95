//! Remote syscalls: running a syscall in a stopped tracee's own context.
//!
//! The tracee's vdso always contains a `syscall` instruction (`0f 05`, the fallback
//! paths of its clock functions). To run `nr(args)` in the tracee we point `rip` at
//! that instruction with the arguments in registers, resume with `PTRACE_SYSCALL`, and
//! collect the syscall-enter and syscall-exit stops; `rax` at the exit stop is the
//! result. No byte of the tracee's memory is changed to do this, so nothing has to be
//! put back if the dumper dies halfway.
//!
//! Around the injected calls, [`RemoteThread`] keeps the registers and blocked-signal
//! mask the thread had when it was seized, blocks every signal (so that none is
//! delivered onto injected registers), and on [`RemoteThread::restore`] puts the thread
//! back as it was.
//!
//! A thread interrupted inside a syscall shows `rax = -ERESTART*`, `orig_rax = nr` and
//! `rip` just past the `syscall` instruction; the kernel would normally fix that up on
//! its way back to user space, but injected registers replace that path. So the saved
//! registers are rewritten the way the kernel would have done: [`resume_regs`] for a
//! thread that keeps running here (`-ERESTART_RESTARTBLOCK` becomes `restart_syscall`,
//! whose restart block is still intact in this kernel), and [`image_regs`] for the image
//! (`-ERESTART_RESTARTBLOCK` becomes `-EINTR`, since a restored task has no restart
//! block; this is what CRIU writes too).

use std::fs::File;
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::ptrace::{self, PtraceError, Regs, Stop};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// A failure to run a syscall inside a tracee.
#[derive(Debug, Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// No `syscall` instruction could be found in the tracee.
    #[error("no syscall instruction in the vdso of {pid}")]
    NoSyscallInsn { pid: i32 },
    /// Reading the tracee's maps or vdso failed.
    #[error("cannot read {what} of {pid}")]
    Proc {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The injected syscall returned an error.
    #[error("remote {name} in thread {tid} failed")]
    Syscall {
        tid: i32,
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Finds the address of a `syscall` instruction in `pid`'s vdso.
pub fn find_syscall_insn(pid: i32) -> Result<u64, RemoteError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| {
        RemoteError::Proc {
            pid,
            what: "maps",
            source,
        }
    })?;
    let (start, end) = maps
        .lines()
        .filter(|l| l.ends_with("[vdso]"))
        .find_map(|l| {
            let range = l.split_whitespace().next()?;
            let (s, e) = range.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .ok_or(RemoteError::NoSyscallInsn { pid })?;

    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|source| RemoteError::Proc {
        pid,
        what: "mem",
        source,
    })?;
    let mut code = vec![0u8; (end - start) as usize];
    mem.read_exact_at(&mut code, start)
        .map_err(|source| RemoteError::Proc {
            pid,
            what: "vdso",
            source,
        })?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| start + off as u64)
        .ok_or(RemoteError::NoSyscallInsn { pid })
}

/// Registers for a thread that keeps running after the dump (see the module docs).
pub fn resume_regs(orig: &Regs) -> Regs {
    let mut regs = *orig;
    if (orig.orig_rax as i64) < 0 {
        return regs;
    }
    match -(orig.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.rax = orig.orig_rax;
            regs.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => {
            regs.rax = libc::SYS_restart_syscall as u64;
            regs.rip -= 2;
        }
        _ => {}
    }
    regs
}

/// Registers as written to the image (CRIU's semantics, see the module docs).
pub fn image_regs(orig: &Regs) -> Regs {
    let mut regs = *orig;
    if (orig.orig_rax as i64) < 0 {
        return regs;
    }
    match -(orig.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.rax = orig.orig_rax;
            regs.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => regs.rax = (-libc::EINTR) as i64 as u64,
        _ => {}
    }
    regs
}

/// A stopped tracee thread that runs syscalls on our behalf.
#[derive(Debug)]
pub struct RemoteThread {
    tid: i32,
    syscall_ip: u64,
    orig_regs: Regs,
    orig_sigmask: u64,
    touched: bool,
}

impl RemoteThread {
    /// Takes over a thread stopped by `PTRACE_INTERRUPT`, saving its registers and mask.
    pub fn new(tid: i32, syscall_ip: u64) -> Result<RemoteThread, RemoteError> {
        let orig_regs = ptrace::get_regs(tid)?;
        let orig_sigmask = ptrace::get_sigmask(tid)?;
        Ok(RemoteThread {
            tid,
            syscall_ip,
            orig_regs,
            orig_sigmask,
            touched: false,
        })
    }

    /// Thread id of the tracee.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Registers the thread had when it was taken over.
    pub fn orig_regs(&self) -> &Regs {
        &self.orig_regs
    }

    /// Blocked-signal mask the thread had when it was taken over.
    pub fn orig_sigmask(&self) -> u64 {
        self.orig_sigmask
    }

    /// Runs syscall `nr` with up to six arguments; returns the raw (possibly
    /// negative-errno) result.
    pub fn syscall_raw(&mut self, nr: i64, args: &[u64]) -> Result<i64, RemoteError> {
        if !self.touched {
            ptrace::set_sigmask(self.tid, !0)?;
            self.touched = true;
        }
        let mut regs = self.orig_regs;
        regs.rax = nr as u64;
        // The kernel must not apply restart logic to the injected registers.
        regs.orig_rax = u64::MAX;
        regs.rip = self.syscall_ip;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        regs.rdi = a[0];
        regs.rsi = a[1];
        regs.rdx = a[2];
        regs.r10 = a[3];
        regs.r8 = a[4];
        regs.r9 = a[5];
        ptrace::set_regs(self.tid, &regs)?;

        for _ in 0..2 {
            ptrace::cont_syscall(self.tid)?;
            self.wait_syscall_stop()?;
        }
        let out = ptrace::get_regs(self.tid)?;
        Ok(out.rax as i64)
    }

    /// Like [`Self::syscall_raw`], turning a negative result into an error named `name`.
    pub fn syscall(
        &mut self,
        name: &'static str,
        nr: i64,
        args: &[u64],
    ) -> Result<u64, RemoteError> {
        let ret = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            let source = std::io::Error::from_raw_os_error(-ret as i32);
            return Err(RemoteError::Syscall {
                tid: self.tid,
                name,
                source,
            });
        }
        Ok(ret as u64)
    }

    fn wait_syscall_stop(&self) -> Result<(), RemoteError> {
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Syscall => return Ok(()),
                // Every signal is blocked; only a new PTRACE_INTERRUPT could land here.
                Stop::Event { .. } => ptrace::cont_syscall(self.tid)?,
                Stop::Signal(sig) => {
                    return Err(PtraceError::UnexpectedStop {
                        tid: self.tid,
                        stop: Stop::Signal(sig),
                    }
                    .into());
                }
                stop => return Err(ptrace::exited(self.tid, stop).into()),
            }
        }
    }

    /// Puts the registers and signal mask back so that the thread continues where it
    /// was seized once detached.
    pub fn restore(mut self) -> Result<(), RemoteError> {
        self.restore_inner()
    }

    fn restore_inner(&mut self) -> Result<(), RemoteError> {
        if !self.touched {
            return Ok(());
        }
        ptrace::set_regs(self.tid, &resume_regs(&self.orig_regs))?;
        ptrace::set_sigmask(self.tid, self.orig_sigmask)?;
        self.touched = false;
        Ok(())
    }
}

impl Drop for RemoteThread {
    fn drop(&mut self) {
        if let Err(err) = self.restore_inner() {
            tracing::warn!(tid = self.tid, error = %err, "could not restore registers of tracee");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero() -> Regs {
        // SAFETY: user_regs_struct is plain integers.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn interrupted_nanosleep_restarts_by_restart_syscall_live_and_eintr_in_image() {
        let mut r = zero();
        r.orig_rax = libc::SYS_clock_nanosleep as u64;
        r.rax = (-ERESTART_RESTARTBLOCK) as u64;
        r.rip = 0x1002;
        let live = resume_regs(&r);
        assert_eq!(live.rax, libc::SYS_restart_syscall as u64);
        assert_eq!(live.rip, 0x1000);
        let img = image_regs(&r);
        assert_eq!(img.rax as i64, -(libc::EINTR as i64));
        assert_eq!(img.rip, 0x1002);
    }

    #[test]
    fn erestartsys_reexecutes_the_syscall() {
        let mut r = zero();
        r.orig_rax = libc::SYS_read as u64;
        r.rax = (-ERESTARTSYS) as u64;
        r.rip = 0x2002;
        for regs in [resume_regs(&r), image_regs(&r)] {
            assert_eq!(regs.rax, libc::SYS_read as u64);
            assert_eq!(regs.rip, 0x2000);
        }
    }

    #[test]
    fn user_mode_registers_are_left_alone() {
        let mut r = zero();
        r.orig_rax = u64::MAX;
        r.rax = (-ERESTARTSYS) as u64;
        r.rip = 0x3000;
        assert_eq!(resume_regs(&r).rip, 0x3000);
        assert_eq!(image_regs(&r).rax, r.rax);
    }
}
