//! Moving the child's vdso family to where the dump had it.
//!
//! The restored code holds pointers into its vdso, so `[vvar]`, `[vvar_vclock]` (kernel
//! 6.x) and `[vdso]` move together by one displacement. Each mapping goes first to a
//! free temporary spot and then to its place, so no move lands on another special
//! mapping (`MREMAP_FIXED` would unmap it). CRIU may record `[vvar]` and
//! `[vvar_vclock]` as one VMA, so the check compares spans, not mapping counts.

use cryo_format::schema::VmaEntry;

use crate::inject::Tracee;
use crate::maps::Mapping;
use crate::memory::{MemoryError, SCRATCH_LEN, Scratch, call, find_gap};
use crate::plan::vma_status;

fn describe(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(s, e)| format!("{:#x}+{:#x}", s, e - s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Moves the current vdso family so that `[vdso]` lands on the dumped vdso VMA.
pub fn move_vdso(
    t: &Tracee,
    pid: i32,
    vmas: &[VmaEntry],
    specials: &[&Mapping],
    scratch: Scratch,
) -> Result<(), MemoryError> {
    let dumped: Vec<(u64, u64)> = vmas
        .iter()
        .filter(|v| v.status & (vma_status::VDSO | vma_status::VVAR) != 0)
        .map(|v| (v.start, v.end))
        .collect();
    let Some(dumped_vdso) = vmas.iter().find(|v| v.status & vma_status::VDSO != 0) else {
        return Ok(());
    };
    let current: Vec<(u64, u64)> = specials.iter().map(|m| (m.start, m.end)).collect();
    let layout_error = || MemoryError::VdsoLayout {
        pid,
        dumped: describe(&dumped),
        current: describe(&current),
    };
    let Some(cur_vdso) = specials.iter().find(|m| m.name == "[vdso]") else {
        return Err(layout_error());
    };
    if cur_vdso.end - cur_vdso.start != dumped_vdso.end - dumped_vdso.start {
        return Err(layout_error());
    }
    let delta = dumped_vdso.start.wrapping_sub(cur_vdso.start);
    // The family must occupy the same span, shifted, as the dumped VMAs (CRIU may
    // record [vvar] and [vvar_vclock] as one VMA).
    let span = |r: &[(u64, u64)]| {
        (
            r.iter().map(|x| x.0).min().unwrap_or(0),
            r.iter().map(|x| x.1).max().unwrap_or(0),
        )
    };
    let (cs, ce) = span(&current);
    let (ds, de) = span(&dumped);
    if cs.wrapping_add(delta) != ds || ce.wrapping_add(delta) != de {
        return Err(layout_error());
    }
    if delta == 0 {
        return Ok(());
    }

    let mut busy: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.extend(&current);
    busy.push((scratch.addr, scratch.addr + SCRATCH_LEN));
    let tmp = find_gap(&busy, ce - cs).ok_or(MemoryError::NoRoom {
        pid,
        len: ce - cs,
        what: "moving the vdso",
    })?;
    let mremap = |from: u64, len: u64, to: u64| {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        call(
            t,
            pid,
            format!("moving the vdso family {from:#x} -> {to:#x}"),
            "mremap",
            libc::SYS_mremap,
            &[from, len, len, flags, to],
        )
    };
    for &(s, e) in &current {
        mremap(s, e - s, tmp + (s - cs))?;
    }
    for &(s, e) in &current {
        mremap(tmp + (s - cs), e - s, s.wrapping_add(delta))?;
    }
    Ok(())
}
