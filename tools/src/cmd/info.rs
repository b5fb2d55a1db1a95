//! `imgtool info`: the type and entry count of an image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cryo_format::ImageFile;
use cryo_format::magic::Layout;
use serde_json::json;

use crate::json::{output, pyjson};

/// Print the magic and number of entries of an image, as `{"magic": ..., "count": N}`.
///
/// Entries are counted with their extra payloads framed correctly (crit miscounts images
/// with payloads and fails on ghost files). A pagemap's head is not counted, as in crit.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image.
    pub file: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let image = ImageFile::open(&args.file)?;
    let mut count = 0usize;
    for entry in image.entries() {
        entry?;
        count += 1;
    }
    if image.magic().layout == Layout::Pagemap {
        count = count.saturating_sub(1);
    }
    let doc = json!({"magic": image.magic().name, "count": count});
    let text = pyjson::to_string(&doc, Some(4));
    output::write_stdout(format!("{text}\n").as_bytes()).context("cannot write stdout")
}
