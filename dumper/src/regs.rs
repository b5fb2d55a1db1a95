//! Registers into image form: `user_regs_struct` → `user_x86_regs_entry`, and the XSAVE
//! area → `user_x86_fpregs_entry` (the legacy FXSAVE part as fields, the extended
//! components as CRIU's `user_x86_xsave_entry` arrays).
//!
//! The XSAVE area from `NT_X86_XSTATE` is in standard (non-compacted) form: FXSAVE
//! legacy region (512 bytes, whose software-reserved bytes 464.. carry the kernel's
//! `xfeatures` mask at 472), the XSAVE header at 512 (`xstate_bv`), then each enabled
//! component at the offset CPUID leaf 0xD reports for it. A component is written when
//! the kernel enables it (its bit is in `xfeatures`), whether or not it is in use, so
//! the restorer can rebuild the area from the image alone.

use cryo_format::schema::{
    UserX86CetEntry, UserX86FpregsEntry, UserX86RegsEntry, UserX86XsaveEntry,
};

use crate::ptrace::Regs;

/// `user_x86_regs_mode.NATIVE`.
const MODE_NATIVE: i32 = 1;

/// General purpose registers in image form.
pub fn gpregs(r: &Regs) -> UserX86RegsEntry {
    UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(MODE_NATIVE),
    }
}

fn u16_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]) as u32)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn u32s(b: &[u8], off: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| u32_at(b, off + 4 * i)).collect()
}

fn u64s(b: &[u8], off: usize, n: usize) -> Vec<u64> {
    (0..n).map(|i| u64_at(b, off + 8 * i)).collect()
}

/// Offset of XSAVE component `n` in the standard format (CPUID.(EAX=0xD, ECX=n).EBX).
pub fn xstate_offset(n: u32) -> usize {
    let r = std::arch::x86_64::__cpuid_count(0xD, n);
    r.ebx as usize
}

/// FPU/SSE/AVX/AVX-512 state in image form.
pub fn fpregs(xsave: &[u8]) -> UserX86FpregsEntry {
    let xfeatures = u64_at(xsave, 472);
    let has = |bit: u32| xfeatures & (1 << bit) != 0 && xsave.len() > 512;
    let comp = |bit: u32, words: usize| -> Vec<u64> {
        if has(bit) {
            u64s(xsave, xstate_offset(bit), words)
        } else {
            Vec::new()
        }
    };

    let xsave_entry = (xsave.len() > 512).then(|| UserX86XsaveEntry {
        xstate_bv: u64_at(xsave, 512),
        ymmh_space: if has(2) {
            u32s(xsave, xstate_offset(2), 64)
        } else {
            Vec::new()
        },
        bndreg_state: comp(3, 8),
        bndcsr_state: comp(4, 8),
        opmask_reg: comp(5, 8),
        zmm_upper: comp(6, 64),
        hi16_zmm: comp(7, 128),
        pkru: if has(9) {
            u32s(xsave, xstate_offset(9), 2)
        } else {
            Vec::new()
        },
        cet: Some(UserX86CetEntry { cet: 0, ssp: 0 }),
    });
    UserX86FpregsEntry {
        cwd: u16_at(xsave, 0),
        swd: u16_at(xsave, 2),
        twd: u16_at(xsave, 4),
        fop: u16_at(xsave, 6),
        rip: u64_at(xsave, 8),
        rdp: u64_at(xsave, 16),
        mxcsr: u32_at(xsave, 24),
        mxcsr_mask: u32_at(xsave, 28),
        st_space: u32s(xsave, 32, 32),
        xmm_space: u32s(xsave, 160, 64),
        padding: Vec::new(),
        xsave: xsave_entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_region_fields_come_from_their_offsets() {
        let mut area = vec![0u8; 576 + 256];
        area[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        area[160..164].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        area[472..480].copy_from_slice(&0x7u64.to_le_bytes()); // x87 | SSE | AVX
        area[512..520].copy_from_slice(&0x2u64.to_le_bytes());
        let off = xstate_offset(2);
        if area.len() < off + 256 {
            area.resize(off + 256, 0);
        }
        area[off..off + 4].copy_from_slice(&0x1234u32.to_le_bytes());

        let fp = fpregs(&area);
        assert_eq!(fp.cwd, 0x37f);
        assert_eq!(fp.mxcsr, 0x1f80);
        assert_eq!(fp.xmm_space[0], 0xdead_beef);
        assert_eq!(fp.st_space.len(), 32);
        let xs = fp.xsave.unwrap();
        assert_eq!(xs.xstate_bv, 2);
        assert_eq!(xs.ymmh_space.len(), 64);
        assert_eq!(xs.ymmh_space[0], 0x1234);
        assert!(xs.opmask_reg.is_empty(), "AVX-512 not enabled in xfeatures");
    }
}
