//! A thread's dumped registers, turned into what `PTRACE_SETREGS` and
//! `PTRACE_SETREGSET NT_X86_XSTATE` take.
//!
//! General registers map one to one. A thread frozen inside an interrupted system
//! call may carry a restart code in `rax` (the kernel would have restarted the call
//! on the way back to user space, had the dump not intervened): for
//! `-ERESTARTSYS`, `-ERESTARTNOINTR` and `-ERESTARTNOHAND` the call is set up again
//! (`rax = orig_rax`, `rip -= 2`, back onto the 2-byte `syscall` instruction); a
//! `-ERESTART_RESTARTBLOCK` cannot be resumed (its restart block lived in the
//! kernel), so the call returns `-EINTR`, as CRIU's dump does. `orig_rax` is then set
//! to -1 so the kernel applies no restart logic of its own.
//!
//! The FPU state is written over the xsave buffer the kernel gives for the fresh
//! thread, so unknown parts keep valid values: the legacy area, then each component
//! the image carries (AVX, AVX-512, PKRU) at its standard-format offset from CPUID
//! leaf 0xD, and `xstate_bv` limited to what this CPU supports.

use cryo_format::schema::{UserX86FpregsEntry, UserX86RegsEntry};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Errors building the FPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("thread {tid}: the kernel's xsave buffer is {len} bytes, too short for {what}")]
    ShortXsave {
        tid: i32,
        len: usize,
        what: &'static str,
    },
    #[error("thread {tid}: fpregs field {field} has {found} words, expected {expected}")]
    FieldLength {
        tid: i32,
        field: &'static str,
        found: usize,
        expected: usize,
    },
}

/// General registers for `PTRACE_SETREGS`, with restart codes resolved.
pub fn user_regs(img: &UserX86RegsEntry) -> libc::user_regs_struct {
    let mut r = libc::user_regs_struct {
        r15: img.r15,
        r14: img.r14,
        r13: img.r13,
        r12: img.r12,
        rbp: img.bp,
        rbx: img.bx,
        r11: img.r11,
        r10: img.r10,
        r9: img.r9,
        r8: img.r8,
        rax: img.ax,
        rcx: img.cx,
        rdx: img.dx,
        rsi: img.si,
        rdi: img.di,
        orig_rax: img.orig_ax,
        rip: img.ip,
        cs: img.cs,
        eflags: img.flags,
        rsp: img.sp,
        ss: img.ss,
        fs_base: img.fs_base,
        gs_base: img.gs_base,
        ds: img.ds,
        es: img.es,
        fs: img.fs,
        gs: img.gs,
    };
    resolve_restart(&mut r);
    r
}

/// Applies the kernel's syscall-restart rule to registers frozen in a syscall.
pub fn resolve_restart(r: &mut libc::user_regs_struct) {
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => r.rax = (-libc::EINTR) as i64 as u64,
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
}

/// Standard-format offset and size of xsave component `index`, from CPUID.
fn component(index: u32) -> (usize, usize) {
    let r = core::arch::x86_64::__cpuid_count(0xd, index);
    (r.ebx as usize, r.eax as usize)
}

fn put_words<T: Copy>(buf: &mut [u8], off: usize, words: &[T], to_bytes: impl Fn(T) -> Vec<u8>) {
    let mut at = off;
    for &w in words {
        let b = to_bytes(w);
        buf[at..at + b.len()].copy_from_slice(&b);
        at += b.len();
    }
}

/// Writes the image's FPU state over `buf`, the thread's current xsave buffer.
pub fn fill_xstate(tid: i32, buf: &mut [u8], fp: &UserX86FpregsEntry) -> Result<(), RegsError> {
    if buf.len() < 576 {
        return Err(RegsError::ShortXsave {
            tid,
            len: buf.len(),
            what: "the legacy area and header",
        });
    }
    let check = |field, found: usize, expected| {
        if found == expected {
            Ok(())
        } else {
            Err(RegsError::FieldLength {
                tid,
                field,
                found,
                expected,
            })
        }
    };
    check("st_space", fp.st_space.len(), 32)?;
    check("xmm_space", fp.xmm_space.len(), 64)?;

    buf[0..2].copy_from_slice(&(fp.cwd as u16).to_le_bytes());
    buf[2..4].copy_from_slice(&(fp.swd as u16).to_le_bytes());
    buf[4..6].copy_from_slice(&(fp.twd as u16).to_le_bytes());
    buf[6..8].copy_from_slice(&(fp.fop as u16).to_le_bytes());
    buf[8..16].copy_from_slice(&fp.rip.to_le_bytes());
    buf[16..24].copy_from_slice(&fp.rdp.to_le_bytes());
    buf[24..28].copy_from_slice(&fp.mxcsr.to_le_bytes());
    buf[28..32].copy_from_slice(&fp.mxcsr_mask.to_le_bytes());
    put_words(buf, 32, &fp.st_space, |w: u32| w.to_le_bytes().to_vec());
    put_words(buf, 160, &fp.xmm_space, |w: u32| w.to_le_bytes().to_vec());

    // The kernel's software-reserved bytes say which features this CPU saves.
    let supported = u64::from_le_bytes(buf[472..480].try_into().expect("8 bytes"));
    let Some(xs) = &fp.xsave else {
        let bv = 0b11 & supported;
        buf[512..520].copy_from_slice(&bv.to_le_bytes());
        return Ok(());
    };

    let parts: [(u32, &'static str, usize); 5] = [
        (2, "ymmh_space", xs.ymmh_space.len() * 4),
        (5, "opmask_reg", xs.opmask_reg.len() * 8),
        (6, "zmm_upper", xs.zmm_upper.len() * 8),
        (7, "hi16_zmm", xs.hi16_zmm.len() * 8),
        (9, "pkru", xs.pkru.len() * 4),
    ];
    let mut bv = xs.xstate_bv & supported;
    for (index, what, bytes) in parts {
        if bytes == 0 || supported & (1 << index) == 0 {
            bv &= !(1 << index);
            continue;
        }
        let (off, size) = component(index);
        if off + size > buf.len() || bytes > size {
            return Err(RegsError::ShortXsave {
                tid,
                len: buf.len(),
                what,
            });
        }
        match index {
            2 => put_words(buf, off, &xs.ymmh_space, |w: u32| w.to_le_bytes().to_vec()),
            5 => put_words(buf, off, &xs.opmask_reg, |w: u64| w.to_le_bytes().to_vec()),
            6 => put_words(buf, off, &xs.zmm_upper, |w: u64| w.to_le_bytes().to_vec()),
            7 => put_words(buf, off, &xs.hi16_zmm, |w: u64| w.to_le_bytes().to_vec()),
            _ => put_words(buf, off, &xs.pkru, |w: u32| w.to_le_bytes().to_vec()),
        }
    }
    buf[512..520].copy_from_slice(&bv.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(ax: i64, orig: i64, ip: u64) -> libc::user_regs_struct {
        // SAFETY: plain integers.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.rax = ax as u64;
        r.orig_rax = orig as u64;
        r.rip = ip;
        r
    }

    #[test]
    fn restartable_syscall_is_rewound() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let mut r = regs(-code, 230, 0x1002);
            resolve_restart(&mut r);
            assert_eq!((r.rax, r.rip, r.orig_rax), (230, 0x1000, u64::MAX));
        }
    }

    #[test]
    fn restart_block_returns_eintr() {
        let mut r = regs(-ERESTART_RESTARTBLOCK, 230, 0x1002);
        resolve_restart(&mut r);
        assert_eq!(r.rax as i64, -4);
        assert_eq!(r.rip, 0x1002);
    }

    #[test]
    fn plain_results_are_kept() {
        let mut r = regs(-4, 230, 0x1002);
        resolve_restart(&mut r);
        assert_eq!((r.rax as i64, r.rip), (-4, 0x1002));
        let mut r = regs(-ERESTARTSYS, -1, 0x1002);
        resolve_restart(&mut r);
        assert_eq!(r.rip, 0x1002, "not in a syscall: no rewind");
    }

    #[test]
    fn legacy_area_lands_at_fxsave_offsets() {
        let fp = UserX86FpregsEntry {
            cwd: 0x37f,
            mxcsr: 0x1f80,
            st_space: vec![0; 32],
            xmm_space: (0..64).collect(),
            ..Default::default()
        };
        let mut buf = vec![0u8; 1024];
        buf[472] = 0b11;
        fill_xstate(1, &mut buf, &fp).unwrap();
        assert_eq!(&buf[0..2], &[0x7f, 0x03]);
        assert_eq!(u32::from_le_bytes(buf[24..28].try_into().unwrap()), 0x1f80);
        assert_eq!(u32::from_le_bytes(buf[164..168].try_into().unwrap()), 1);
        assert_eq!(buf[512], 0b11);
    }

    #[test]
    fn wrong_xmm_length_is_named() {
        let fp = UserX86FpregsEntry {
            st_space: vec![0; 32],
            xmm_space: vec![0; 3],
            ..Default::default()
        };
        let err = fill_xstate(7, &mut [0u8; 1024], &fp).unwrap_err();
        assert!(matches!(
            err,
            RegsError::FieldLength {
                field: "xmm_space",
                ..
            }
        ));
    }
}
