//! Layer 3: VMAs, pagemaps, and the lengths of pages images.

use std::collections::BTreeMap;

use cryo_format::magic::well_known;
use cryo_format::schema::{MmEntry, PagemapEntry, PagemapHead, VmaEntry};

use super::framing::is_pages_image;
use super::pagemap::MapEntry;
use super::tree::{TreeFacts, check_file_id};
use super::{Checker, Rule};
use crate::analyse::vma::status;
use cryo_format::pagemap::{PAGE_SIZE as PAGE, PE_LAZY, PE_PARENT, PE_PRESENT};

const KNOWN_FLAGS: u32 = PE_PARENT | PE_LAZY | PE_PRESENT;

/// Present pages each pages image must hold, and which pagemaps say so.
#[derive(Debug, Default)]
struct PagesClaim {
    pages: u64,
    pagemaps: Vec<String>,
}

pub(crate) fn check_memory(checker: &mut Checker, tree: &TreeFacts) {
    let mut claims: BTreeMap<u32, PagesClaim> = BTreeMap::new();

    for &pid in &tree.with_memory {
        let vmas = check_mm(checker, pid, tree);
        let file = format!("pagemap-{pid}.img");
        check_pagemap(checker, &file, vmas.as_deref(), &mut claims);
    }
    for file in shmem_pagemaps(checker) {
        check_pagemap(checker, &file, None, &mut claims);
    }
    check_pages_sizes(checker, &claims);
}

/// Checks `mm-PID.img`; returns its VMAs as (start, end) when they are usable.
fn check_mm(checker: &mut Checker, pid: u32, tree: &TreeFacts) -> Option<Vec<(u64, u64)>> {
    let file = format!("mm-{pid}.img");
    if !checker.exists(&file) {
        return None; // reported by the tree layer
    }
    let mm = checker.read_one::<MmEntry>(&file, well_known::mm())?;

    if let Some(files) = &tree.files {
        if mm.exe_file_id != 0 {
            check_file_id(
                checker,
                &file,
                0,
                "exe_file_id",
                mm.exe_file_id,
                None,
                files,
            );
        }
        for (index, vma) in mm.vmas.iter().enumerate() {
            if vma.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0 {
                let field = format!("vmas[{index}].shmid");
                let id = u32::try_from(vma.shmid).unwrap_or(u32::MAX);
                check_file_id(checker, &file, 0, &field, id, None, files);
            }
        }
    }
    Some(check_vmas(checker, &file, &mm.vmas))
}

fn check_vmas(checker: &mut Checker, file: &str, vmas: &[VmaEntry]) -> Vec<(u64, u64)> {
    let mut previous_end = 0u64;
    for (index, vma) in vmas.iter().enumerate() {
        let field = |name: &str| format!("vmas[{index}].{name}");
        if !vma.start.is_multiple_of(PAGE) {
            let message = format!("start {:#x} is not page aligned", vma.start);
            checker.report(Rule::Vma, file, Some(0), Some(&field("start")), message);
        }
        if !vma.end.is_multiple_of(PAGE) {
            let message = format!("end {:#x} is not page aligned", vma.end);
            checker.report(Rule::Vma, file, Some(0), Some(&field("end")), message);
        }
        if vma.end <= vma.start {
            let message = format!("end {:#x} is not above start {:#x}", vma.end, vma.start);
            checker.report(Rule::Vma, file, Some(0), Some(&field("end")), message);
        }
        if index > 0 && vma.start < previous_end {
            let message = format!(
                "start {:#x} is below the end {previous_end:#x} of vmas[{}]: VMAs overlap or are \
                 out of order",
                vma.start,
                index - 1
            );
            checker.report(Rule::Vma, file, Some(0), Some(&field("start")), message);
        }
        previous_end = previous_end.max(vma.end);
    }
    let mut ranges: Vec<(u64, u64)> = vmas.iter().map(|vma| (vma.start, vma.end)).collect();
    ranges.sort_unstable();
    ranges
}

fn shmem_pagemaps(checker: &Checker) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(&checker.dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .flatten()
        .filter_map(|item| item.file_name().into_string().ok())
        .filter(|name| name.starts_with("pagemap-shmem-") && name.ends_with(".img"))
        .collect();
    names.sort();
    names
}

fn check_pagemap(
    checker: &mut Checker,
    file: &str,
    vmas: Option<&[(u64, u64)]>,
    claims: &mut BTreeMap<u32, PagesClaim>,
) {
    if !checker.exists(file) {
        return; // reported by the tree layer
    }
    let Some(entries) = checker.read::<PagemapEntry>(file, well_known::pagemap(), true) else {
        return;
    };
    // Entry 0 is the head; it decodes as a pagemap_entry only by accident, so re-read it.
    let Some(head) = read_head(checker, file) else {
        return;
    };
    let mut present = 0u64;
    let mut previous_end = 0u64;

    for (index, raw) in entries.into_iter().filter(|(index, _)| *index > 0) {
        let entry = MapEntry::from_entry(index, &raw);
        let at = Some(index);
        if raw.region_pages.is_some() || !raw.compressed_size.is_empty() {
            checker.report(
                Rule::Unsupported,
                file,
                at,
                Some("compressed_size"),
                "compressed pages (criu-dev 2026) are not read by cryo",
            );
        }
        if !entry.vaddr.is_multiple_of(PAGE) {
            let message = format!("address {:#x} is not page aligned", entry.vaddr);
            checker.report(Rule::Pagemap, file, at, Some("vaddr"), message);
        }
        let Some(end) = entry.end() else {
            let message = format!("{} pages overflow the address space", entry.nr_pages);
            checker.report(Rule::Pagemap, file, at, Some("nr_pages"), message);
            continue;
        };
        if entry.nr_pages == 0 {
            checker.report(Rule::Pagemap, file, at, Some("nr_pages"), "covers no page");
        }
        if entry.flags & !KNOWN_FLAGS != 0 {
            let message = format!("unknown flag bits {:#x}", entry.flags & !KNOWN_FLAGS);
            checker.report(Rule::Pagemap, file, at, Some("flags"), message);
        }
        if entry.flags & PE_PRESENT != 0 && entry.flags & PE_PARENT != 0 {
            let message = "PE_PRESENT and PE_PARENT together: pages cannot be both here and in \
                           the parent";
            checker.report(Rule::Pagemap, file, at, Some("flags"), message);
        }
        if entry.vaddr < previous_end {
            let message = format!(
                "address {:#x} is below the end {previous_end:#x} of the previous entry: entries \
                 overlap or are out of order",
                entry.vaddr
            );
            checker.report(Rule::Pagemap, file, at, Some("vaddr"), message);
        }
        previous_end = previous_end.max(end);
        if let Some(hole) = vmas.and_then(|vmas| first_uncovered(vmas, entry.vaddr, end)) {
            let message = format!(
                "pages {:#x}-{end:#x}: address {hole:#x} is outside every VMA of the process",
                entry.vaddr
            );
            checker.report(Rule::PagemapOutsideVma, file, at, Some("vaddr"), message);
        }
        if entry.is_present() {
            present = present.saturating_add(entry.nr_pages);
        }
    }

    let claim = claims.entry(head.pages_id).or_default();
    claim.pages = claim.pages.saturating_add(present);
    claim.pagemaps.push(file.to_owned());
}

fn read_head(checker: &mut Checker, file: &str) -> Option<PagemapHead> {
    let image = cryo_format::ImageFile::open(checker.dir.join(file)).ok()?;
    let first = image.entries().next()?.ok()?;
    match image.decode::<PagemapHead>(&first) {
        Ok(head) => Some(head),
        Err(_) if checker.is_faulty(file, Some(0)) => None,
        Err(error) => {
            checker.report(Rule::Encoding, file, Some(0), None, error.to_string());
            None
        }
    }
}

/// The first address of `start..end` that no VMA of `vmas` (sorted) holds.
fn first_uncovered(vmas: &[(u64, u64)], start: u64, end: u64) -> Option<u64> {
    let mut cursor = start;
    let first = vmas.partition_point(|&(_, vma_end)| vma_end <= start);
    for &(vma_start, vma_end) in &vmas[first..] {
        if cursor >= end {
            break;
        }
        if vma_start > cursor {
            return Some(cursor);
        }
        cursor = cursor.max(vma_end);
    }
    (cursor < end).then_some(cursor)
}

fn check_pages_sizes(checker: &mut Checker, claims: &BTreeMap<u32, PagesClaim>) {
    for (id, claim) in claims {
        let file = format!("pages-{id}.img");
        let expected = claim.pages.saturating_mul(PAGE);
        let actual = std::fs::metadata(checker.dir.join(&file)).map(|meta| meta.len());
        let sources = claim.pagemaps.join(", ");
        match actual {
            Err(_) if expected > 0 => checker.report(
                Rule::MissingImage,
                &file,
                None,
                None,
                format!(
                    "{sources} name it for {} present pages, but it is missing",
                    claim.pages
                ),
            ),
            Ok(len) if len != expected => checker.report(
                Rule::PagesSize,
                &file,
                None,
                None,
                format!(
                    "is {len} bytes, but {sources} account for {} present pages ({expected} bytes)",
                    claim.pages
                ),
            ),
            _ => {}
        }
    }

    // Pages images that no pagemap names.
    let Ok(listing) = std::fs::read_dir(&checker.dir) else {
        return;
    };
    let mut orphans: Vec<String> = listing
        .flatten()
        .filter_map(|item| item.file_name().into_string().ok())
        .filter(|name| is_pages_image(name))
        .filter(|name| {
            let id = name["pages-".len()..name.len() - ".img".len()].parse::<u32>();
            id.is_ok_and(|id| !claims.contains_key(&id))
        })
        .collect();
    orphans.sort();
    for name in orphans {
        checker.report(
            Rule::PagesSize,
            &name,
            None,
            None,
            "no pagemap names this pages image",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_address_outside_sorted_vmas() {
        let vmas = [(0x1000, 0x3000), (0x3000, 0x4000), (0x6000, 0x8000)];
        assert_eq!(first_uncovered(&vmas, 0x1000, 0x4000), None);
        assert_eq!(first_uncovered(&vmas, 0x2000, 0x7000), Some(0x4000));
        assert_eq!(first_uncovered(&vmas, 0x8000, 0x9000), Some(0x8000));
        assert_eq!(first_uncovered(&vmas, 0x0, 0x2000), Some(0x0));
    }
}
