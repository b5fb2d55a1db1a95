//! Export: write a stored checkpoint as a CRIU image directory's memory part.
//!
//! For every pagemap of the checkpoint this writes `pagemap-<pid>.img` (or
//! `pagemap-shmem-<id>.img`) and `pages-<pages_id>.img`, with the pages ids a CRIU page server
//! would have used (0x10001, 0x10002… in the order the pagemaps were opened) and the entries
//! exactly as the client sent them, encoded as CRIU 4.2 encodes them. Together with the rest of
//! the dump (written by the dumper into its own directory) this is a complete image set that
//! CRIU's tools and cryo's restorer read.
//!
//! Each pages image is written and fsynced before its pagemap, each under a temporary name
//! renamed into place; if the export fails, every file it already placed is removed again.
//! Entries marked `PE_PARENT` stay holes that refer to the parent checkpoint, which must then
//! be exported too and linked as `parent` ([`ExportOptions::parent_link`]) — or, with
//! [`ExportOptions::flatten`], each hole is resolved up the parent chain and written as
//! present pages, giving a self-contained image set.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use cryo_format::magic::well_known;
use cryo_format::pagemap::{encode_entry, encode_entry_compat, encode_head};
use cryo_format::writer::{ImageWriter, WriteError};

use crate::protocol::{DstId, DstKind, PAGE_SIZE, PE_PARENT, PE_PRESENT};
use crate::store::{Entry, PagemapIndex, Store, StoreError, StoredPagemap};

/// Pages read from the store at a time.
const READ_BATCH: usize = 256;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("checkpoint {checkpoint}: reading the store")]
    Store {
        checkpoint: u64,
        #[source]
        source: StoreError,
    },
    #[error("writing {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
    #[error("checkpoint {checkpoint}: {dst:?} page {vaddr:#x} is a hole no parent holds")]
    Unresolved {
        checkpoint: u64,
        dst: DstId,
        vaddr: u64,
    },
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to export and how.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Create a `parent` symlink to this path in the output directory.
    pub parent_link: Option<PathBuf>,
    /// Resolve `PE_PARENT` holes through the parent chain and write them as present pages.
    pub flatten: bool,
    /// Write 0 in each entry's `compat_nr_pages` (field 2), as CRIU 4.2's own page server
    /// does. By default the count goes in both fields 2 and 5, so CRIU before 4.2 (which
    /// reads only field 2) restores the export too.
    pub zero_compat_nr_pages: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub files: Vec<PathBuf>,
    pub pages: u64,
    pub hole_pages: u64,
}

/// Exports checkpoint `checkpoint` of `store` into `out` (created if missing).
pub fn export_checkpoint(
    store: &Store,
    checkpoint: u64,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let store_err = |source| ExportError::Store { checkpoint, source };
    let pagemaps = store.pagemaps(checkpoint).map_err(store_err)?;
    fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.into(),
        source,
    })?;

    let mut summary = ExportSummary::default();
    let result = (|| {
        for pm in &pagemaps {
            if options.flatten {
                let flat = flatten(store, checkpoint, pm)?;
                export_pagemap(store, checkpoint, &flat, out, options, &mut summary)?;
            } else {
                export_pagemap(store, checkpoint, pm, out, options, &mut summary)?;
            }
        }
        if let Some(target) = &options.parent_link {
            let link = out.join("parent");
            std::os::unix::fs::symlink(target, &link).map_err(|source| ExportError::Io {
                path: link.clone(),
                source,
            })?;
            summary.files.push(link);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for f in &summary.files {
            let _ = fs::remove_file(f);
        }
        return Err(e);
    }
    Ok(summary)
}

fn export_pagemap(
    store: &Store,
    checkpoint: u64,
    pm: &StoredPagemap,
    out: &Path,
    opts: &ExportOptions,
    summary: &mut ExportSummary,
) -> Result<(), ExportError> {
    // Pages first: a pagemap on disk always has its data.
    let pages_path = out.join(format!("pages-{}.img", pm.pages_id));
    write_pages(store, checkpoint, &pm.refs, &pages_path)?;
    summary.files.push(pages_path);
    summary.pages += pm.refs.len() as u64;

    let path = out.join(pm.dst.pagemap_file_name());
    let magic = match pm.dst.kind {
        DstKind::Pid => well_known::pagemap(),
        DstKind::Shmem => well_known::shmem_pagemap(),
    };
    let image_err = |source| ExportError::Image {
        path: path.clone(),
        source,
    };
    let mut w = ImageWriter::create(&path, magic).map_err(image_err)?;
    let mut buf = Vec::with_capacity(32);
    encode_head(&mut buf, pm.pages_id);
    w.write_raw(&buf, &[]).map_err(image_err)?;
    for e in &pm.entries {
        buf.clear();
        let encode = if opts.zero_compat_nr_pages {
            encode_entry
        } else {
            encode_entry_compat
        };
        encode(&mut buf, e.vaddr, e.nr_pages, e.flags);
        w.write_raw(&buf, &[]).map_err(image_err)?;
        if !e.is_present() {
            summary.hole_pages += e.nr_pages;
        }
    }
    w.finish().map_err(image_err)?;
    summary.files.push(path);
    Ok(())
}

fn write_pages(
    store: &Store,
    checkpoint: u64,
    refs: &[u64],
    path: &Path,
) -> Result<(), ExportError> {
    let tmp = path.with_extension("img.cryo-tmp");
    let io = |source| ExportError::Io {
        path: tmp.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; READ_BATCH * PAGE_SIZE];
        for chunk in refs.chunks(READ_BATCH) {
            let bytes = &mut buf[..chunk.len() * PAGE_SIZE];
            store
                .read_pages(chunk, bytes)
                .map_err(|source| ExportError::Store { checkpoint, source })?;
            w.write_all(bytes).map_err(io)?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(|source| ExportError::Io {
            path: path.into(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| ExportError::Io {
                    path: dir.into(),
                    source,
                })?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Rewrites `pm` with every `PE_PARENT` entry replaced by present pages from the parent chain.
fn flatten(
    store: &Store,
    checkpoint: u64,
    pm: &StoredPagemap,
) -> Result<StoredPagemap, ExportError> {
    let store_err = |source| ExportError::Store { checkpoint, source };
    let mut out = StoredPagemap {
        entries: Vec::new(),
        refs: Vec::new(),
        ..pm.clone()
    };
    let mut ref_at = 0usize;
    // Parent pagemaps, loaded once each: (checkpoint id, pagemap).
    let mut chain: Vec<(u64, Option<(StoredPagemap, PagemapIndex)>)> = Vec::new();
    let mut next = store.checkpoint(checkpoint).map_err(store_err)?.parent;
    for e in &pm.entries {
        if e.is_present() {
            let n = e.nr_pages as usize;
            out.refs.extend_from_slice(&pm.refs[ref_at..ref_at + n]);
            ref_at += n;
            out.entries.push(*e);
            continue;
        }
        if e.flags & PE_PARENT == 0 {
            out.entries.push(*e);
            continue;
        }
        for page in 0..e.nr_pages {
            let vaddr = e.vaddr + page * PAGE_SIZE as u64;
            let mut level = 0;
            let found = loop {
                if level == chain.len() {
                    let Some(parent) = next else { break None };
                    let pagemap = store.pagemap(parent, pm.dst).map_err(store_err)?.map(|p| {
                        let index = PagemapIndex::new(&p);
                        (p, index)
                    });
                    next = store.checkpoint(parent).map_err(store_err)?.parent;
                    chain.push((parent, pagemap));
                }
                let Some((parent_pm, parent_index)) = &chain[level].1 else {
                    break None;
                };
                let Some(at) = parent_index.locate(vaddr) else {
                    break None;
                };
                match at.ref_index {
                    Some(ri) => break Some(parent_pm.refs[ri as usize]),
                    None if at.flags & PE_PARENT != 0 => level += 1,
                    None => break None,
                }
            };
            let r = found.ok_or(ExportError::Unresolved {
                checkpoint,
                dst: pm.dst,
                vaddr,
            })?;
            out.refs.push(r);
        }
        out.entries.push(Entry {
            vaddr: e.vaddr,
            nr_pages: e.nr_pages,
            flags: PE_PRESENT,
        });
    }
    Ok(out)
}
