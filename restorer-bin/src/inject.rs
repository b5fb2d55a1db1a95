//! Driving a stopped child with ptrace: remote system calls, memory writes, registers.
//!
//! The dumper's parasite works on a live target that must come back unchanged; the
//! restorer works on a fresh child whose every register and mapping is about to be
//! replaced, so its needs are simpler and it keeps this small module of its own:
//!
//! - A remote syscall sets the registers (`rax` = number, arguments in `rdi`, `rsi`,
//!   `rdx`, `r10`, `r8`, `r9`), points `rip` at a `syscall; int3` sequence, resumes the
//!   thread and waits for the `SIGTRAP` of the `int3`. `orig_rax` is set to -1 so that
//!   the kernel never applies syscall-restart logic to our register sets.
//! - Before the child has a scratch page, the sequence is the restorer's own
//!   [`gadget_address`]: the child is a fork of the restorer, so the same code sits at
//!   the same address. Afterwards it is the scratch page, which survives the unmapping
//!   of everything the child inherited.
//! - [`Tracee::syscall_to_exit`] runs the last syscall (unmapping the scratch page)
//!   with `PTRACE_SYSCALL` and stops at syscall exit, so the thread never returns to
//!   the page it just removed; the final registers are then set in that stop.
//!
//! All requests for a tracee come from the thread that seized it (the restorer is
//! single-threaded).

use std::io::IoSlice;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::uio::{RemoteIoVec, process_vm_writev};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

core::arch::global_asm!(
    ".pushsection .text.cryo_syscall_gadget,\"ax\",@progbits",
    ".globl cryo_syscall_gadget",
    "cryo_syscall_gadget:",
    "syscall",
    "int3",
    ".popsection",
);

unsafe extern "C" {
    fn cryo_syscall_gadget();
}

/// Machine code of the scratch page's entry point: `syscall; int3`.
pub const GADGET_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];

/// Machine code of the scratch page's copy routine: `rep movsb; int3`.
pub const COPY_CODE: [u8; 3] = [0xf3, 0xa4, 0xcc];

/// Address of the `syscall; int3` sequence in the restorer's text (and so in a freshly
/// forked child's).
pub fn gadget_address() -> u64 {
    cryo_syscall_gadget as *const () as u64
}

const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// Errors talking to a tracee.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("ptrace {op} on thread {tid} failed")]
    Ptrace {
        tid: i32,
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("thread {tid} stopped by signal {signal} at rip {rip:#x} during {during}")]
    UnexpectedSignal {
        tid: i32,
        signal: i32,
        rip: u64,
        during: &'static str,
    },
    #[error("thread {tid} ended ({status}) during {during}")]
    Gone {
        tid: i32,
        status: String,
        during: &'static str,
    },
    #[error("remote {syscall} in thread {tid} failed")]
    Syscall {
        tid: i32,
        syscall: &'static str,
        #[source]
        source: Errno,
    },
    #[error("writing {len} bytes at {addr:#x} of process {pid} failed")]
    Write {
        pid: i32,
        addr: u64,
        len: usize,
        #[source]
        source: Errno,
    },
}

/// The rseq registration of a thread, as `PTRACE_GET_RSEQ_CONFIGURATION` reports it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// A seized thread.
#[derive(Debug)]
pub struct Tracee {
    pub tid: i32,
    /// Where the `syscall; int3` sequence is in the tracee.
    pub gadget: u64,
    template: libc::user_regs_struct,
}

impl Tracee {
    /// Seizes `tid`, interrupts it and waits for the stop.
    pub fn seize(tid: i32) -> Result<Self, InjectError> {
        let pid = Pid::from_raw(tid);
        let options = ptrace::Options::PTRACE_O_EXITKILL | ptrace::Options::PTRACE_O_TRACESYSGOOD;
        ptrace::seize(pid, options).map_err(|source| InjectError::Ptrace {
            tid,
            op: "SEIZE",
            source,
        })?;
        ptrace::interrupt(pid).map_err(|source| InjectError::Ptrace {
            tid,
            op: "INTERRUPT",
            source,
        })?;
        let mut tracee = Tracee {
            tid,
            gadget: gadget_address(),
            template: zeroed_regs(),
        };
        tracee.wait_stop("seize")?;
        tracee.template = tracee.regs()?;
        Ok(tracee)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.tid)
    }

    fn ptrace_err(&self, op: &'static str) -> impl Fn(Errno) -> InjectError + '_ {
        move |source| InjectError::Ptrace {
            tid: self.tid,
            op,
            source,
        }
    }

    /// Waits until the tracee is in any ptrace stop; returns the stopping signal (0 for
    /// event and syscall stops).
    fn wait_stop(&self, during: &'static str) -> Result<i32, InjectError> {
        loop {
            match waitpid(self.pid(), Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Stopped(_, sig)) => return Ok(sig as i32),
                Ok(WaitStatus::PtraceEvent(..)) | Ok(WaitStatus::PtraceSyscall(_)) => return Ok(0),
                Ok(status) => {
                    return Err(InjectError::Gone {
                        tid: self.tid,
                        status: format!("{status:?}"),
                        during,
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(InjectError::Ptrace {
                        tid: self.tid,
                        op: "waitpid",
                        source,
                    });
                }
            }
        }
    }

    pub fn regs(&self) -> Result<libc::user_regs_struct, InjectError> {
        ptrace::getregs(self.pid()).map_err(self.ptrace_err("GETREGS"))
    }

    pub fn set_regs(&self, regs: &libc::user_regs_struct) -> Result<(), InjectError> {
        ptrace::setregs(self.pid(), *regs).map_err(self.ptrace_err("SETREGS"))
    }

    /// Runs one system call in the tracee and returns its result.
    pub fn syscall(
        &self,
        name: &'static str,
        nr: libc::c_long,
        args: &[u64],
    ) -> Result<u64, InjectError> {
        self.set_regs(&self.call_regs(nr, args))?;
        loop {
            ptrace::cont(self.pid(), None).map_err(self.ptrace_err("CONT"))?;
            match self.wait_stop(name)? {
                libc::SIGTRAP => break,
                sig @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) => {
                    let rip = self.regs().map(|r| r.rip).unwrap_or(0);
                    return Err(InjectError::UnexpectedSignal {
                        tid: self.tid,
                        signal: sig,
                        rip,
                        during: name,
                    });
                }
                // Any other stop (a stray signal, a group-stop event) is passed over; the
                // signal is dropped, which a child still under construction can afford.
                sig => tracing::debug!(
                    tid = self.tid,
                    signal = sig,
                    syscall = name,
                    "stop passed over"
                ),
            }
        }
        self.result(name)
    }

    /// Runs one system call and stops at its exit, without returning to user space.
    pub fn syscall_to_exit(
        &self,
        name: &'static str,
        nr: libc::c_long,
        args: &[u64],
    ) -> Result<u64, InjectError> {
        self.set_regs(&self.call_regs(nr, args))?;
        let mut stops = 0;
        while stops < 2 {
            ptrace::syscall(self.pid(), None).map_err(self.ptrace_err("SYSCALL"))?;
            if self.wait_stop(name)? == 0 {
                stops += 1;
            }
        }
        self.result(name)
    }

    /// Copies `len` bytes from `src` to `dst` inside the tracee by running the
    /// `rep movsb; int3` routine at `code` (see [`COPY_CODE`]).
    pub fn copy_in_child(
        &self,
        code: u64,
        dst: u64,
        src: u64,
        len: u64,
    ) -> Result<(), InjectError> {
        let mut regs = self.template;
        regs.rip = code;
        regs.rdi = dst;
        regs.rsi = src;
        regs.rcx = len;
        regs.orig_rax = u64::MAX;
        // Direction flag clear: copy upwards.
        regs.eflags &= !0x400;
        self.set_regs(&regs)?;
        loop {
            ptrace::cont(self.pid(), None).map_err(self.ptrace_err("CONT"))?;
            match self.wait_stop("copy")? {
                libc::SIGTRAP => return Ok(()),
                sig @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) => {
                    let rip = self.regs().map(|r| r.rip).unwrap_or(0);
                    return Err(InjectError::UnexpectedSignal {
                        tid: self.tid,
                        signal: sig,
                        rip,
                        during: "copy",
                    });
                }
                sig => tracing::debug!(tid = self.tid, signal = sig, "stop passed over"),
            }
        }
    }

    fn call_regs(&self, nr: libc::c_long, args: &[u64]) -> libc::user_regs_struct {
        let mut regs = self.template;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        regs.rax = nr as u64;
        regs.rdi = a[0];
        regs.rsi = a[1];
        regs.rdx = a[2];
        regs.r10 = a[3];
        regs.r8 = a[4];
        regs.r9 = a[5];
        regs.rip = self.gadget;
        regs.orig_rax = u64::MAX;
        regs
    }

    fn result(&self, name: &'static str) -> Result<u64, InjectError> {
        let ret = self.regs()?.rax as i64;
        if (-4095..0).contains(&ret) {
            return Err(InjectError::Syscall {
                tid: self.tid,
                syscall: name,
                source: Errno::from_raw(-ret as i32),
            });
        }
        Ok(ret as u64)
    }

    /// Writes `data` at `addr` in the tracee's memory (which must be writable).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), InjectError> {
        write_memory(self.tid, addr, data)
    }

    /// Sets the blocked-signal mask.
    pub fn set_sigmask(&self, mask: u64) -> Result<(), InjectError> {
        // SAFETY: PTRACE_SETSIGMASK reads 8 bytes from the pointer, which points at `mask`.
        let ret = unsafe {
            libc::ptrace(
                PTRACE_SETSIGMASK,
                self.tid,
                std::mem::size_of::<u64>(),
                &mask as *const u64,
            )
        };
        Errno::result(ret)
            .map(drop)
            .map_err(self.ptrace_err("SETSIGMASK"))
    }

    /// The rseq area the thread has registered, if any.
    pub fn rseq_config(&self) -> Result<Option<RseqConfig>, InjectError> {
        let mut conf = RseqConfig::default();
        // SAFETY: the kernel writes at most `size_of::<RseqConfig>()` bytes into `conf`.
        let ret = unsafe {
            libc::ptrace(
                PTRACE_GET_RSEQ_CONFIGURATION,
                self.tid,
                std::mem::size_of::<RseqConfig>(),
                &mut conf as *mut RseqConfig,
            )
        };
        Errno::result(ret).map_err(self.ptrace_err("GET_RSEQ_CONFIGURATION"))?;
        Ok((conf.rseq_abi_pointer != 0).then_some(conf))
    }

    /// Reads the thread's extended FPU state (standard xsave format).
    pub fn xstate(&self) -> Result<Vec<u8>, InjectError> {
        let mut buf = vec![0u8; 16384];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: the kernel writes at most iov_len bytes into `buf` and updates iov_len.
        let ret = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                self.tid,
                NT_X86_XSTATE,
                &mut iov as *mut libc::iovec,
            )
        };
        Errno::result(ret).map_err(self.ptrace_err("GETREGSET NT_X86_XSTATE"))?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// Sets the thread's extended FPU state.
    pub fn set_xstate(&self, buf: &[u8]) -> Result<(), InjectError> {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the kernel only reads iov_len bytes from `buf`.
        let ret = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                self.tid,
                NT_X86_XSTATE,
                &mut iov as *mut libc::iovec,
            )
        };
        Errno::result(ret)
            .map(drop)
            .map_err(self.ptrace_err("SETREGSET NT_X86_XSTATE"))
    }

    /// Lets the thread run (its registers must be final by now).
    pub fn detach(&self) -> Result<(), InjectError> {
        ptrace::detach(self.pid(), None::<Signal>).map_err(self.ptrace_err("DETACH"))
    }
}

/// Writes `data` at `addr` of process `pid` with `process_vm_writev`, retrying partial writes.
pub fn write_memory(pid: i32, addr: u64, data: &[u8]) -> Result<(), InjectError> {
    let mut done = 0usize;
    while done < data.len() {
        let local = [IoSlice::new(&data[done..])];
        let remote = [RemoteIoVec {
            base: (addr as usize) + done,
            len: data.len() - done,
        }];
        match process_vm_writev(Pid::from_raw(pid), &local, &remote) {
            Ok(0) => {
                return Err(InjectError::Write {
                    pid,
                    addr: addr + done as u64,
                    len: data.len() - done,
                    source: Errno::EFAULT,
                });
            }
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(InjectError::Write {
                    pid,
                    addr: addr + done as u64,
                    len: data.len() - done,
                    source,
                });
            }
        }
    }
    Ok(())
}

fn zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
