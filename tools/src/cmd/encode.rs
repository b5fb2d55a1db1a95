//! `imgtool encode`: crit's JSON (plain or pretty) → binary image.

use std::path::PathBuf;

use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

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
    #[arg(short, long = "in", value_name = "FILE", conflicts_with = "dir")]
    pub input: Option<PathBuf>,
    /// Output image (default: stdout); with --dir, the output directory.
    #[arg(short, long = "out", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Encode every NAME.json of a directory (as written by `decode -D`) into NAME, in
    /// parallel. Needs --out DIR.
    #[arg(short = 'D', long, value_name = "DIR", requires = "output")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    if let (Some(dir), Some(out)) = (&args.dir, &args.output) {
        return encode_dir(dir, out);
    }

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

fn encode_file(input: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
        format!(
            "cannot read JSON from {}; encode expects JSON input",
            input.display()
        )
    })?;
    image::from_json(&doc, out).with_context(|| format!("cannot encode {}", input.display()))?;
    Ok(())
}

fn encode_dir(dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name.ends_with(".json") {
            names.push(name);
        }
    }
    names.sort();

    let failures: Vec<anyhow::Error> = names
        .par_iter()
        .filter_map(|name| {
            let target = out.join(name.trim_end_matches(".json"));
            encode_file(&dir.join(name), &target).err()
        })
        .collect();
    for failure in &failures {
        eprintln!("imgtool: {failure:#}");
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} JSON files in {} could not be encoded",
            failures.len(),
            names.len(),
            dir.display()
        );
    }
    Ok(())
}
