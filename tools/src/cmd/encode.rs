//! `imgtool encode`: crit's JSON (plain or pretty) → binary image.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::json::image;
use crate::json::output::{self, ScratchFile};

/// Encode crit-compatible JSON back into a binary image.
///
/// Accepts `decode` output with or without --pretty (and go-crit's quoted 64-bit
/// numbers); the result equals the original image byte for byte. Unlike crit, a JSON key
/// that is not a field of the message is an error, not silently dropped. The image is
/// written to a temporary file and renamed into place: an error leaves no output file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input JSON (default: stdin).
    #[arg(short, long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output image (default: stdout).
    #[arg(short, long = "out", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let (text, source) = match &args.input {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut data)
                .context("cannot read stdin")?;
            (data, "stdin".to_owned())
        }
    };
    let doc: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
        format!("cannot read JSON from {source}; encode expects JSON input (use decode for images)")
    })?;

    match &args.output {
        Some(out) => {
            image::from_json(&doc, out).with_context(|| format!("cannot encode {source}"))?;
        }
        None => {
            let scratch = ScratchFile::new("encode");
            image::from_json(&doc, &scratch.path)
                .with_context(|| format!("cannot encode {source}"))?;
            let bytes =
                std::fs::read(&scratch.path).context("cannot read back the encoded image")?;
            output::write_stdout(&bytes).context("cannot write stdout")?;
        }
    }
    Ok(())
}
