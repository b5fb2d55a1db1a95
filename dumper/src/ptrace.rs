//! Thin, checked wrappers over the ptrace requests the dumper uses.
//!
//! Every tracee is attached with `PTRACE_SEIZE` (so no SIGSTOP is ever sent, and the
//! tracee can be stopped with `PTRACE_INTERRUPT` and later released with `PTRACE_DETACH`
//! without a trace of the dump in its signal state). `PTRACE_O_TRACESYSGOOD` marks
//! syscall stops with `SIGTRAP | 0x80`, which [`crate::remote`] relies on to run
//! injected syscalls one stop at a time.
//!
//! ptrace is thread-affine: all requests for a tracee must come from the thread that
//! seized it. The callers in this crate do all tracing from one thread.

use std::io;

use thiserror::Error;

/// `NT_PRSTATUS` regset: the general purpose registers (`user_regs_struct`).
const NT_PRSTATUS: libc::c_int = 1;
/// `NT_X86_XSTATE` regset: the XSAVE area in standard (non-compacted) form.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_GET_THREAD_AREA` (x86).
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;
/// Generous upper bound of the XSAVE area (AMX tiles make it ~11 KiB).
const XSTATE_MAX: usize = 16 * 1024;

/// The general purpose registers of an x86-64 thread.
pub type Regs = libc::user_regs_struct;

/// A failed ptrace request, with the thread and request it concerned.
#[derive(Debug, Error)]
pub enum PtraceError {
    /// The request itself failed.
    #[error("ptrace {request} on thread {tid} failed")]
    Request {
        tid: i32,
        request: &'static str,
        #[source]
        source: io::Error,
    },
    /// The thread exited or was killed while traced.
    #[error("thread {tid} exited while traced ({how})")]
    Exited { tid: i32, how: String },
    /// waitpid reported a stop the caller did not expect.
    #[error("thread {tid} stopped unexpectedly: {stop:?}")]
    UnexpectedStop { tid: i32, stop: Stop },
}

/// What `waitpid` reported for a tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_*` stop (e.g. `PTRACE_EVENT_STOP` after an interrupt) with its signal.
    Event { event: i32, sig: i32 },
    /// Syscall-enter or syscall-exit stop (`SIGTRAP | 0x80`).
    Syscall,
    /// Signal-delivery stop: the signal is about to be delivered.
    Signal(i32),
    /// The thread exited with this code.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

fn check(tid: i32, request: &'static str, ret: libc::c_long) -> Result<libc::c_long, PtraceError> {
    if ret < 0 {
        return Err(PtraceError::Request {
            tid,
            request,
            source: io::Error::last_os_error(),
        });
    }
    Ok(ret)
}

/// Attaches to `tid` without stopping it.
pub fn seize(tid: i32) -> Result<(), PtraceError> {
    let options = libc::PTRACE_O_TRACESYSGOOD as libc::c_long;
    // SAFETY: PTRACE_SEIZE takes no pointers; data carries the option bits.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, options) };
    check(tid, "SEIZE", ret).map(drop)
}

/// Asks a seized thread to stop; the stop is collected with [`wait`].
pub fn interrupt(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_INTERRUPT takes no pointers.
    let ret = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
    check(tid, "INTERRUPT", ret).map(drop)
}

/// Releases a stopped tracee; it continues with the registers it has now.
pub fn detach(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_DETACH takes no pointers; signal 0 injects nothing.
    let ret = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    check(tid, "DETACH", ret).map(drop)
}

/// Resumes a stopped tracee, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_CONT takes no pointers; data is a signal number.
    let ret = unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, sig as libc::c_long) };
    check(tid, "CONT", ret).map(drop)
}

/// Resumes a stopped tracee until the next syscall entry or exit.
pub fn cont_syscall(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_SYSCALL takes no pointers; no signal is injected.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, 0) };
    check(tid, "SYSCALL", ret).map(drop)
}

/// Waits for the next state change of tracee `tid`.
pub fn wait(tid: i32) -> Result<Stop, PtraceError> {
    let mut status = 0;
    let mut interrupted = false;
    loop {
        // The dump is asked to stop: break a remote syscall that may block for long
        // (it returns early, and the dump fails at its next step).
        if !interrupted && crate::interrupt::requested().is_some() {
            interrupted = true;
            let _ = interrupt(tid);
        }
        // SAFETY: status is a valid out-pointer for the duration of the call.
        let ret = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if ret >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(PtraceError::Request {
                tid,
                request: "waitpid",
                source: err,
            });
        }
    }
    Ok(decode_status(status))
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event != 0 {
        return Stop::Event { event, sig };
    }
    if sig == libc::SIGTRAP | 0x80 {
        return Stop::Syscall;
    }
    Stop::Signal(sig)
}

/// Turns an exit report into an error naming the thread.
pub fn exited(tid: i32, stop: Stop) -> PtraceError {
    match stop {
        Stop::Exited(code) => PtraceError::Exited {
            tid,
            how: format!("exit code {code}"),
        },
        Stop::Killed(sig) => PtraceError::Exited {
            tid,
            how: format!("killed by signal {sig}"),
        },
        other => PtraceError::UnexpectedStop { tid, stop: other },
    }
}

/// Waits until an interrupted tracee reaches its `PTRACE_EVENT_STOP`.
///
/// Signals that arrive first are delivered (the tracee runs their handler and then
/// stops), so the dump neither loses nor duplicates them.
pub fn wait_interrupt_stop(tid: i32) -> Result<i32, PtraceError> {
    for _ in 0..64 {
        match wait(tid)? {
            Stop::Event {
                event: libc::PTRACE_EVENT_STOP,
                sig,
            } => return Ok(sig),
            Stop::Signal(sig) => cont(tid, sig)?,
            stop @ (Stop::Exited(_) | Stop::Killed(_)) => return Err(exited(tid, stop)),
            Stop::Event { .. } | Stop::Syscall => cont(tid, 0)?,
        }
    }
    Err(PtraceError::UnexpectedStop {
        tid,
        stop: Stop::Signal(0),
    })
}

fn get_regset(tid: i32, kind: libc::c_int, buf: &mut [u8]) -> Result<usize, PtraceError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, which outlives the call; the kernel writes at most
    // iov_len bytes and updates iov_len to the size it wrote.
    let ret = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, kind as usize, &mut iov) };
    check(tid, "GETREGSET", ret)?;
    Ok(iov.iov_len)
}

fn set_regset(tid: i32, kind: libc::c_int, buf: &[u8]) -> Result<(), PtraceError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, which outlives the call; the kernel only reads it.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, kind as usize, &mut iov) };
    check(tid, "SETREGSET", ret).map(drop)
}

/// Reads the general purpose registers of a stopped tracee.
pub fn get_regs(tid: i32) -> Result<Regs, PtraceError> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    let len = std::mem::size_of::<Regs>();
    // SAFETY: the slice covers exactly `regs`, which is plain old data.
    let bytes = unsafe { std::slice::from_raw_parts_mut((&mut regs as *mut Regs).cast(), len) };
    get_regset(tid, NT_PRSTATUS, bytes)?;
    Ok(regs)
}

/// Writes the general purpose registers of a stopped tracee.
pub fn set_regs(tid: i32, regs: &Regs) -> Result<(), PtraceError> {
    let len = std::mem::size_of::<Regs>();
    // SAFETY: the slice covers exactly `regs`, which is plain old data.
    let bytes = unsafe { std::slice::from_raw_parts((regs as *const Regs).cast(), len) };
    set_regset(tid, NT_PRSTATUS, bytes)
}

/// Reads the full XSAVE area (standard format) of a stopped tracee.
pub fn get_xstate(tid: i32) -> Result<Vec<u8>, PtraceError> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let len = get_regset(tid, NT_X86_XSTATE, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// Writes the XSAVE area of a stopped tracee.
pub fn set_xstate(tid: i32, area: &[u8]) -> Result<(), PtraceError> {
    set_regset(tid, NT_X86_XSTATE, area)
}

/// The blocked-signal mask of a stopped tracee.
pub fn get_sigmask(tid: i32) -> Result<u64, PtraceError> {
    let mut mask = 0u64;
    // SAFETY: addr is the size of the mask, data points at a u64 we own.
    let ret = unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, tid, 8usize, &mut mask) };
    check(tid, "GETSIGMASK", ret)?;
    Ok(mask)
}

/// Replaces the blocked-signal mask of a stopped tracee.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), PtraceError> {
    // SAFETY: addr is the size of the mask, data points at a u64 the kernel only reads.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, tid, 8usize, &mask) };
    check(tid, "SETSIGMASK", ret).map(drop)
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `PTRACE_PEEKSIGINFO_SHARED`: the process-wide queue instead of the thread's own.
const PEEKSIGINFO_SHARED: u32 = 1;

/// Pending (queued, undelivered) signals of a stopped tracee as raw 128-byte
/// `siginfo_t`s: the thread's own queue, or with `shared` the process-wide one.
pub fn pending_signals(tid: i32, shared: bool) -> Result<Vec<[u8; 128]>, PtraceError> {
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; 32];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
            nr: buf.len() as i32,
        };
        // SAFETY: addr points at the args struct, data at room for `nr` siginfos; both
        // outlive the call.
        let ret = unsafe { libc::ptrace(libc::PTRACE_PEEKSIGINFO, tid, &args, buf.as_mut_ptr()) };
        let n = check(tid, "PEEKSIGINFO", ret)? as usize;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// `struct user_desc` of `<asm/ldt.h>`, as `PTRACE_GET_THREAD_AREA` fills it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UserDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    /// seg_32bit:1 contents:2 read_exec_only:1 limit_in_pages:1 seg_not_present:1 useable:1
    pub flags: u32,
}

const _: () = assert!(std::mem::size_of::<UserDesc>() == 16);

/// Reads GDT TLS slot `entry` (12..=14 on x86-64) of a stopped tracee.
pub fn get_thread_area(tid: i32, entry: u32) -> Result<UserDesc, PtraceError> {
    let mut desc = UserDesc {
        entry_number: entry,
        ..UserDesc::default()
    };
    // SAFETY: data points at a 16-byte user_desc we own; addr is the slot index.
    let ret = unsafe { libc::ptrace(PTRACE_GET_THREAD_AREA, tid, entry as usize, &mut desc) };
    check(tid, "GET_THREAD_AREA", ret)?;
    Ok(desc)
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<RseqConfig>() == 24);

/// The rseq area a thread registered, if any.
pub fn get_rseq_config(tid: i32) -> Result<Option<RseqConfig>, PtraceError> {
    let mut conf = RseqConfig::default();
    let size = std::mem::size_of::<RseqConfig>();
    // SAFETY: data points at a RseqConfig we own; addr is its size.
    let ret = unsafe { libc::ptrace(libc::PTRACE_GET_RSEQ_CONFIGURATION, tid, size, &mut conf) };
    check(tid, "GET_RSEQ_CONFIGURATION", ret)?;
    Ok((conf.rseq_abi_pointer != 0).then_some(conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decoding_distinguishes_stops() {
        // exited with code 3: status = 3 << 8
        assert_eq!(decode_status(3 << 8), Stop::Exited(3));
        // killed by SIGKILL
        assert_eq!(decode_status(libc::SIGKILL), Stop::Killed(libc::SIGKILL));
        // syscall stop: 0x7f | (SIGTRAP|0x80) << 8
        assert_eq!(
            decode_status(0x7f | ((libc::SIGTRAP | 0x80) << 8)),
            Stop::Syscall
        );
        // PTRACE_EVENT_STOP with SIGTRAP
        let ev = 0x7f | (libc::SIGTRAP << 8) | (libc::PTRACE_EVENT_STOP << 16);
        assert_eq!(
            decode_status(ev),
            Stop::Event {
                event: libc::PTRACE_EVENT_STOP,
                sig: libc::SIGTRAP
            }
        );
        assert_eq!(
            decode_status(0x7f | (libc::SIGALRM << 8)),
            Stop::Signal(libc::SIGALRM)
        );
    }
}
