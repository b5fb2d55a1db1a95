//! Searching dumped memory for a string, bytes or a regular expression.
//!
//! The search runs over *spans*: maximal stretches of dumped bytes inside one VMA, so a match
//! may cross pagemap entries but never a VMA boundary (a match across two mappings would not
//! be a string the process has). Spans are searched in parallel.

use rayon::prelude::*;
use regex::bytes::Regex;
use serde::Serialize;

use super::VmaFilter;
use crate::analyse::diff::hex;
use crate::analyse::hexdump::printable;
use crate::analyse::memory::ProcessMemory;

/// What to look for.
#[derive(Debug, Clone)]
pub enum Needle {
    /// These exact bytes.
    Bytes(Vec<u8>),
    /// A regular expression over bytes.
    Regex(Regex),
}

impl Needle {
    fn regex(&self) -> Result<Regex, regex::Error> {
        match self {
            Needle::Bytes(bytes) => {
                let pattern: String = bytes.iter().map(|byte| format!("\\x{byte:02x}")).collect();
                Regex::new(&format!("(?-u){pattern}"))
            }
            Needle::Regex(regex) => Ok(regex.clone()),
        }
    }
}

/// One match.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    #[serde(serialize_with = "hex")]
    pub vaddr: u64,
    pub len: usize,
    /// The VMA's kind and file.
    pub vma: String,
    /// The match with `context` bytes either side, non-printable bytes as dots.
    pub context: String,
    /// The address where `context` starts.
    #[serde(serialize_with = "hex")]
    pub context_vaddr: u64,
}

/// Finds up to `limit` matches of `needle`, in address order.
pub fn search(
    memory: &ProcessMemory<'_>,
    filter: &VmaFilter,
    needle: &Needle,
    context: usize,
    limit: usize,
) -> Result<Vec<Hit>, regex::Error> {
    let regex = needle.regex()?;
    let spans = memory.spans(|vma| filter.accepts(vma));

    let mut hits: Vec<Hit> = spans
        .par_iter()
        .flat_map_iter(|span| {
            let bytes: &[u8] = &span.bytes;
            regex
                .find_iter(bytes)
                .filter(|found| !found.is_empty())
                .take(limit)
                .map(|found| {
                    let from = found.start().saturating_sub(context);
                    let to = found.end().saturating_add(context).min(bytes.len());
                    let vaddr = span.vaddr + found.start() as u64;
                    Hit {
                        vaddr,
                        len: found.len(),
                        vma: memory
                            .vma_at(vaddr)
                            .map(|vma| vma.label())
                            .unwrap_or_default(),
                        context: bytes[from..to]
                            .iter()
                            .map(|&byte| printable(byte))
                            .collect(),
                        context_vaddr: span.vaddr + from as u64,
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    hits.sort_by_key(|hit| hit.vaddr);
    hits.truncate(limit);
    Ok(hits)
}
