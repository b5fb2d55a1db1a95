//! `imgtool validate DIR`: check every rule of an image set and list all problems.

use std::path::PathBuf;

use clap::Args;

use crate::analyse::validate::validate_dir;

/// Check every structural and cross-reference rule of an image set, listing all problems.
///
/// Rules: magics and versions, required fields, pstree consistency, cores per thread,
/// fdinfo/fs/mm ids present in files.img, VMAs sorted and non-overlapping, pagemap ranges
/// inside VMAs, pages images as long as their pagemaps say, parent chains resolvable and
/// acyclic.
///
/// Every problem is listed, one a line: `FILE[: entry N][: field F]: MESSAGE [RULE]`.
/// With --json: {"dir", "files_checked", "problems": [{"rule", "file", "entry"?, "field"?,
/// "message"}]}. Exit status 0 only when the set is sound, 1 when problems were found.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The image directory.
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the validation; an unsound set is an error (exit status 1) after the listing.
pub fn run(args: &ValidateArgs) -> anyhow::Result<()> {
    let report = validate_dir(&args.dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for problem in &report.problems {
            println!("{problem}");
        }
        if report.is_sound() {
            println!(
                "{}: sound ({} image files checked)",
                report.dir, report.files_checked
            );
        } else {
            println!(
                "{}: {} problem(s) in {} image files",
                report.dir,
                report.problems.len(),
                report.files_checked
            );
        }
    }
    if !report.is_sound() {
        anyhow::bail!(
            "{}: {} problem(s) found",
            args.dir.display(),
            report.problems.len()
        );
    }
    Ok(())
}
