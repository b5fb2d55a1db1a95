//! Synthesises two large image sets for `benches/diff-1g.sh`.
//!
//! `diff_synth SRC OUT_A OUT_B [MIB] [CHANGE_EVERY]` copies the real CRIU set SRC (one
//! process) into OUT_A and OUT_B and adds to its process a MIB-sized anonymous mapping whose
//! pages hold a pattern (word i = 0xC0DE000000000000 | i), written with cryo-format's
//! writers (`PagesWriter`, `ImageWriter`). In OUT_B one word of every CHANGE_EVERY-th page of
//! that mapping differs, so `imgtool diff OUT_A OUT_B` has identical and changed pages to find.

use std::path::Path;

use anyhow::{Context, bail};
use cryo_format::magic::well_known;
use cryo_format::schema::{MmEntry, VmaEntry};
use cryo_format::{ImageSet, ImageWriter, MemoryView, PagemapId, PagesWriter, Source};

/// Where the big mapping goes: below the libraries of any fixture set.
const BIG_START: u64 = 0x7e00_0000_0000;
const PAGE: usize = 4096;
/// Pages written per `add_pages` call.
const CHUNK_PAGES: usize = 256;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: diff_synth SRC OUT_A OUT_B [MIB] [CHANGE_EVERY]");
    }
    let src = Path::new(&args[1]);
    let mib: u64 = args.get(4).map_or(Ok(1024), |text| text.parse())?;
    let change_every: u64 = args.get(5).map_or(Ok(64), |text| text.parse())?;

    for (out, changed) in [(&args[2], false), (&args[3], true)] {
        synthesise(src, Path::new(out), mib, changed.then_some(change_every))
            .with_context(|| format!("cannot write {out}"))?;
    }
    Ok(())
}

fn synthesise(src: &Path, out: &Path, mib: u64, change_every: Option<u64>) -> anyhow::Result<()> {
    let set = ImageSet::open(src)?;
    let pid = set.root()?.pid;
    std::fs::create_dir_all(out)?;

    // Everything but the memory images is copied as is.
    for item in std::fs::read_dir(src)? {
        let item = item?;
        let name = item.file_name().into_string().unwrap_or_default();
        let memory = name.starts_with("pages-")
            || name == format!("pagemap-{pid}.img")
            || name == format!("mm-{pid}.img");
        if item.file_type()?.is_file() && !memory {
            std::fs::copy(item.path(), out.join(&name))?;
        }
    }

    let big_len = mib << 20;
    let mut mm: MmEntry = set.mm(pid)?;
    if mm
        .vmas
        .iter()
        .any(|vma| vma.start < BIG_START + big_len && BIG_START < vma.end)
    {
        bail!("{}: the big mapping would overlap a VMA", src.display());
    }
    let template = mm
        .vmas
        .iter()
        .find(|vma| vma.status == 0x201)
        .cloned()
        .unwrap_or_default();
    mm.vmas.push(VmaEntry {
        start: BIG_START,
        end: BIG_START + big_len,
        ..template
    });
    mm.vmas.sort_by_key(|vma| vma.start);
    let mut writer = ImageWriter::create(out.join(format!("mm-{pid}.img")), well_known::mm())?;
    writer.write(&mm)?;
    writer.finish()?;

    let view = MemoryView::open(src, PagemapId::Pid(pid))?;
    let pages_id = view.pagemap().pages_id();
    let mut pages = PagesWriter::create(out, PagemapId::Pid(pid), pages_id)?;
    let mut big_written = false;
    for segment in view.resolved_runs()? {
        if !big_written && segment.vaddr > BIG_START {
            write_big(&mut pages, big_len, change_every)?;
            big_written = true;
        }
        if let Source::Data { bytes, .. } = segment.source {
            pages.add_pages(segment.vaddr, bytes, true)?;
        }
    }
    if !big_written {
        write_big(&mut pages, big_len, change_every)?;
    }
    pages.finish()?;
    Ok(())
}

fn write_big(pages: &mut PagesWriter, len: u64, change_every: Option<u64>) -> anyhow::Result<()> {
    let total_pages = len / PAGE as u64;
    let mut chunk = vec![0u8; CHUNK_PAGES * PAGE];
    let mut page = 0u64;
    while page < total_pages {
        let count = (total_pages - page).min(CHUNK_PAGES as u64) as usize;
        for (index, word) in chunk[..count * PAGE].chunks_exact_mut(8).enumerate() {
            let i = page * (PAGE as u64 / 8) + index as u64;
            word.copy_from_slice(&(0xC0DE_0000_0000_0000u64 | i).to_le_bytes());
        }
        if let Some(every) = change_every {
            for offset in 0..count as u64 {
                if (page + offset).is_multiple_of(every) {
                    chunk[offset as usize * PAGE] ^= 0xff;
                }
            }
        }
        pages.add_pages(BIG_START + page * PAGE as u64, &chunk[..count * PAGE], true)?;
        page += count as u64;
    }
    Ok(())
}
