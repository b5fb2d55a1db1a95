//! `imgtool decode`: binary image → crit's JSON, for one image or a whole image directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cryo_format::magic::{Header, MAGICS};
use cryo_format::{ImageError, ImageFile};
use rayon::prelude::*;

use crate::json::image::{self, RenderOptions};
use crate::json::output::{self, ScratchFile};
use crate::json::pyjson;

/// Decode a binary image into crit-compatible JSON.
///
/// The JSON is what python crit writes, byte for byte (field order, enum names, MIME
/// base64, `--pretty` hex/flags/dev rendering, `json.dump` layout), with these fixes:
/// task_state 3 prints "Stopped" and 6 "Zombie" (crit swaps them); an enum value unknown
/// to the schema prints as its number instead of vanishing; a string that is not valid
/// UTF-8 is an error naming the entry and field (crit prints a lossy repr). Output goes to
/// a temporary file renamed into place: an error leaves no output file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image (default: stdin).
    #[arg(short, long = "in", value_name = "FILE", conflicts_with = "dir")]
    pub input: Option<PathBuf>,
    /// Output JSON file (default: stdout, with a trailing newline); with --dir, the output
    /// directory (created if missing), one NAME.json per image.
    #[arg(short, long = "out", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Render hex addresses, flag names, devices and addresses like `crit decode --pretty`.
    #[arg(long)]
    pub pretty: bool,
    /// Decode every image of an image directory in parallel (`*.img` and the stats/irmap
    /// service images; pages and other raw images are skipped). Needs --out DIR.
    #[arg(short = 'D', long, value_name = "DIR", requires = "output")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let opts = RenderOptions {
        pretty: args.pretty,
        nopl: false,
    };
    if let (Some(dir), Some(out)) = (&args.dir, &args.output) {
        return decode_dir(dir, out, opts);
    }

    let scratch;
    let input = match &args.input {
        Some(path) => path.as_path(),
        None => {
            scratch = ScratchFile::from_stdin().context("cannot read the image from stdin")?;
            scratch.path.as_path()
        }
    };
    let text = decode_file(input, opts)?;
    match &args.output {
        Some(out) => output::write_atomic(out, text.as_bytes())
            .with_context(|| format!("cannot write {}", out.display())),
        None => output::write_stdout(format!("{text}\n").as_bytes()).context("cannot write stdout"),
    }
}

/// The JSON text of the image at `path`.
pub fn decode_file(path: &Path, opts: RenderOptions) -> Result<String> {
    let image = ImageFile::open(path).map_err(|err| {
        let raw_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_raw_image_name);
        match err {
            ImageError::UnknownMagic { offset: 0, .. } if raw_name => anyhow::Error::new(err)
                .context("this is raw data (like pages-N.img), not an image of entries; read page contents with `imgtool mem`"),
            err => err.into(),
        }
    })?;
    let doc = image::to_json(&image, opts)?;
    Ok(pyjson::to_string(&doc, opts.pretty.then_some(4)))
}

/// Whether `name` is the file name of a raw image (pages-1.img, tmpfs-3.tar.gz.img...).
pub fn is_raw_image_name(name: &str) -> bool {
    MAGICS
        .iter()
        .filter(|m| m.header == Header::Raw)
        .any(|m| matches_pattern(name, m.file))
}

/// Whether `name` is named like an image: `*.img`, or one of the service images that CRIU
/// writes without the suffix. Logs, JSON and other files of a dump directory are not.
pub fn is_image_name(name: &str) -> bool {
    name.ends_with(".img") || matches!(name, "stats-dump" | "stats-restore" | "irmap-cache")
}

/// `name` against a CRIU file pattern with one `%u`/`%lu`/`%x`/`%d` placeholder.
fn matches_pattern(name: &str, pattern: &str) -> bool {
    let Some(at) = pattern.find('%') else {
        return name == pattern;
    };
    let prefix = &pattern[..at];
    let spec_len = pattern[at..]
        .find(|c: char| c.is_ascii_alphabetic() && c != 'l')
        .map_or(1, |i| i + 1);
    let suffix = &pattern[at + spec_len..];
    let Some(middle) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    !middle.is_empty() && middle.chars().all(|c| c.is_ascii_hexdigit())
}

fn decode_dir(dir: &Path, out: &Path, opts: RenderOptions) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_raw_image_name(&name) || !is_image_name(&name) {
            tracing::debug!(name, "not a protobuf image, skipped");
            continue;
        }
        names.push(name);
    }
    names.sort();

    let failures: Vec<anyhow::Error> = names
        .par_iter()
        .filter_map(|name| {
            let target = out.join(format!("{name}.json"));
            decode_file(&dir.join(name), opts)
                .and_then(|text| {
                    output::write_atomic(&target, text.as_bytes())
                        .with_context(|| format!("cannot write {}", target.display()))
                })
                .err()
        })
        .collect();
    for failure in &failures {
        eprintln!("imgtool: {failure:#}");
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} images in {} could not be decoded",
            failures.len(),
            names.len(),
            dir.display()
        );
    }
    tracing::info!(dir = %dir.display(), images = names.len(), "decoded image directory");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_images_are_recognised_by_name() {
        assert!(is_raw_image_name("pages-1.img"));
        assert!(is_raw_image_name("pages-65537.img"));
        assert!(!is_raw_image_name("pagemap-13131.img"));
        assert!(!is_raw_image_name("core-1.img"));
        assert!(!is_raw_image_name("pages-.img"));
        assert!(is_image_name("stats-dump") && is_image_name("core-1.img"));
        assert!(!is_image_name("dump.log") && !is_image_name("core-1.img.json"));
    }
}
