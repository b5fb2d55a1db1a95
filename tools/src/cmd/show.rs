//! `imgtool show`: an image as pretty JSON on stdout.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd::decode::decode_file;
use crate::json::image::RenderOptions;
use crate::json::output;

/// Print an image as pretty JSON (like `crit show`).
///
/// Same rendering as `decode --pretty`; --nopl replaces extra payloads (pipe data,
/// socket queues...) by their size, e.g. "... <4KB>", and leaves ghost file contents out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image.
    pub file: PathBuf,
    /// Do not show entry payloads.
    #[arg(long)]
    pub nopl: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let opts = RenderOptions {
        pretty: true,
        nopl: args.nopl,
    };
    let text = decode_file(&args.file, opts)?;
    output::write_stdout(format!("{text}\n").as_bytes()).context("cannot write stdout")
}
