//! Page-by-page comparison of two processes' memory, by content digest.

use std::cmp::Ordering;

use indicatif::ProgressBar;
use serde::Serialize;

use super::hex;
use crate::analyse::digest::{PageDigest, digest_runs};
use crate::analyse::memory::ProcessMemory;
use crate::analyse::vma::Vma;

/// How many pages fall in each class.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageCounts {
    pub identical: u64,
    pub changed: u64,
    pub only_a: u64,
    pub only_b: u64,
}

impl PageCounts {
    /// Whether any page differs.
    pub fn differs(&self) -> bool {
        self.changed + self.only_a + self.only_b > 0
    }

    pub fn add(&mut self, other: &PageCounts) {
        self.identical += other.identical;
        self.changed += other.changed;
        self.only_a += other.only_a;
        self.only_b += other.only_b;
    }
}

/// Page counts of one VMA.
#[derive(Debug, Clone, Serialize)]
pub struct VmaPages {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(flatten)]
    pub counts: PageCounts,
}

/// Which class a page at one address falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Identical,
    Changed,
    OnlyA,
    OnlyB,
}

/// Compares the dumped pages of one process in two sets.
///
/// Returns the per-VMA rows (VMAs of B, then VMAs only in A, then one `unmapped` row for pages
/// outside every VMA, which only a damaged set has) and the totals.
///
/// With `verify`, pages whose digests match are also compared byte for byte, so a crafted
/// digest collision cannot make different pages count as identical.
pub fn compare_pages(
    a: &ProcessMemory<'_>,
    b: &ProcessMemory<'_>,
    progress: &ProgressBar,
    verify: bool,
) -> (Vec<VmaPages>, PageCounts) {
    let (digests_a, digests_b) = rayon::join(
        || digest_runs(&a.runs, progress),
        || digest_runs(&b.runs, progress),
    );

    let rows_b: Vec<&Vma> = b.vmas.iter().collect();
    let rows_a: Vec<&Vma> = a
        .vmas
        .iter()
        .filter(|vma| {
            b.vma_at(vma.start)
                .is_none_or(|other| other.start != vma.start)
        })
        .collect();
    let mut counts_b = vec![PageCounts::default(); rows_b.len()];
    let mut counts_a = vec![PageCounts::default(); rows_a.len()];
    let mut unmapped = PageCounts::default();

    merge(&digests_a, &digests_b, verify, |vaddr, class| {
        let slot = if let Some(index) = find(&rows_b, vaddr) {
            &mut counts_b[index]
        } else if let Some(index) = find(&rows_a, vaddr) {
            &mut counts_a[index]
        } else {
            &mut unmapped
        };
        match class {
            Class::Identical => slot.identical += 1,
            Class::Changed => slot.changed += 1,
            Class::OnlyA => slot.only_a += 1,
            Class::OnlyB => slot.only_b += 1,
        }
    });

    tracing::debug!(
        pid = b.pid,
        pages_a = digests_a.len(),
        pages_b = digests_b.len(),
        verify,
        "pages compared"
    );
    let mut total = PageCounts::default();
    let mut rows = Vec::new();
    let vmas = rows_b
        .iter()
        .zip(&counts_b)
        .chain(rows_a.iter().zip(&counts_a));
    for (vma, counts) in vmas {
        total.add(counts);
        if *counts != PageCounts::default() {
            rows.push(VmaPages {
                start: vma.start,
                end: vma.end,
                kind: vma.kind.to_string(),
                path: vma.path.clone(),
                counts: *counts,
            });
        }
    }
    if unmapped != PageCounts::default() {
        total.add(&unmapped);
        rows.push(VmaPages {
            start: 0,
            end: 0,
            kind: "unmapped".to_owned(),
            path: None,
            counts: unmapped,
        });
    }
    (rows, total)
}

/// Index of the VMA of `rows` (sorted, as mm images are) that holds `vaddr`.
fn find(rows: &[&Vma], vaddr: u64) -> Option<usize> {
    let index = rows.partition_point(|vma| vma.end <= vaddr);
    rows.get(index)
        .filter(|vma| vma.start <= vaddr)
        .map(|_| index)
}

/// Joins two address-sorted digest lists, calling `visit` once per address.
fn merge(a: &[PageDigest], b: &[PageDigest], verify: bool, mut visit: impl FnMut(u64, Class)) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.vaddr.cmp(&y.vaddr),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                visit(a[i].vaddr, Class::OnlyA);
                i += 1;
            }
            Ordering::Greater => {
                visit(b[j].vaddr, Class::OnlyB);
                j += 1;
            }
            Ordering::Equal => {
                let same = a[i].digest == b[j].digest && (!verify || a[i].page == b[j].page);
                let class = if same {
                    Class::Identical
                } else {
                    Class::Changed
                };
                visit(a[i].vaddr, class);
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyse::memory::{Origin, PAGE_SIZE, ResidentRun};
    use crate::analyse::vma::VmaKind;

    fn vma(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            flags: 0x22,
            status: 0x201,
            kind: VmaKind::Anon,
            path: None,
        }
    }

    fn run(vaddr: u64, bytes: &[u8]) -> ResidentRun<'_> {
        ResidentRun {
            vaddr,
            nr_pages: (bytes.len() / PAGE_SIZE) as u64,
            bytes: Some(bytes),
            origin: Origin::Pages,
        }
    }

    #[test]
    fn classifies_identical_changed_and_one_sided_pages_per_vma() {
        let page = PAGE_SIZE as u64;
        let mut a_bytes = vec![7u8; 3 * PAGE_SIZE];
        let mut b_bytes = a_bytes.clone();
        b_bytes[PAGE_SIZE + 5] = 8; // second page changes
        a_bytes.truncate(3 * PAGE_SIZE);
        let extra = vec![1u8; PAGE_SIZE];

        let a = ProcessMemory {
            pid: 1,
            vmas: vec![vma(0x10000, 0x10000 + 4 * page), vma(0x40000, 0x41000)],
            runs: vec![run(0x10000, &a_bytes), run(0x40000, &extra)],
            arg: 0..0,
            env: 0..0,
        };
        let b = ProcessMemory {
            pid: 1,
            vmas: vec![vma(0x10000, 0x10000 + 4 * page)],
            runs: vec![run(0x10000, &b_bytes), run(0x10000 + 3 * page, &extra)],
            arg: 0..0,
            env: 0..0,
        };

        let (rows, total) = compare_pages(&a, &b, &ProgressBar::hidden(), true);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].counts,
            PageCounts {
                identical: 2,
                changed: 1,
                only_a: 0,
                only_b: 1
            }
        );
        assert_eq!(rows[1].start, 0x40000);
        assert_eq!(rows[1].counts.only_a, 1);
        assert_eq!(
            total.identical + total.changed + total.only_a + total.only_b,
            5
        );
    }

    #[test]
    fn verify_refuses_a_digest_collision() {
        let (x, y) = ([1u8; 8], [2u8; 8]);
        let a = [PageDigest {
            vaddr: 0x1000,
            digest: 7,
            page: &x,
        }];
        let b = [PageDigest {
            vaddr: 0x1000,
            digest: 7,
            page: &y,
        }];
        let mut seen = Vec::new();
        merge(&a, &b, false, |_, class| seen.push(class));
        merge(&a, &b, true, |_, class| seen.push(class));
        assert_eq!(seen, [Class::Identical, Class::Changed]);
    }
}
