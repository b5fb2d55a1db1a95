//! `imgtool validate`: every structural and cross-reference rule of an image set.
//!
//! Validation never stops at the first problem: each check records what it finds as a
//! `Problem` naming the rule, the file, the entry index and the field, and goes on with what
//! it can still read. The checks run in layers so that one fault is reported once:
//!
//! 1. `framing`: every image file's header (magic, and that the magic fits the file name), its
//!    entry framing, and the wire encoding and `required` fields of every entry.
//! 2. `tree`: inventory version, pstree consistency, one core per thread, the per-process
//!    images, and every id that points into `files.img` (fdinfo, fs, mm); `data`: pipe and
//!    FIFO contents belong to pipes that `files.img` opens, seccomp filter indices exist.
//! 3. `memory`: VMAs sorted and non-overlapping, pagemap entries sorted and inside VMAs, and
//!    pages images exactly as long as their pagemaps say.
//! 4. `parent`: the `parent` chain resolves, does not loop, and holds every page that a
//!    `PE_PARENT` entry sends there.
//!
//! Layers 2-4 read images with `Checker::read`, which stays silent about faults layer 1
//! already reported, so each problem appears once.

mod data;
mod framing;
mod memory;
mod pagemap;
mod parent;
mod tree;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use cryo_format::magic::Magic;
use cryo_format::{ImageError, ImageFile};
use serde::Serialize;

/// The rule a problem breaks (stable names, used in JSON and in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Header magics and the file-name/type match.
    Header,
    /// Entry lengths and extra payloads.
    Framing,
    /// Wire encoding of an entry's message.
    Encoding,
    /// A proto2 `required` field is absent.
    Required,
    /// An image the set must have is absent.
    MissingImage,
    /// Inventory version and flags.
    Inventory,
    /// pstree entries: unique pids and tids, leaders, parents.
    Pstree,
    /// Core images match threads; leader has a task core.
    Core,
    /// An id that must name a `files.img` entry does not, or names the wrong type.
    FileRef,
    /// VMAs: aligned, non-empty, sorted, non-overlapping.
    Vma,
    /// Pagemap entries: aligned, non-empty, sorted, valid flags.
    Pagemap,
    /// A pagemap range lies outside every VMA.
    PagemapOutsideVma,
    /// A pages image's length disagrees with its pagemaps.
    PagesSize,
    /// The `parent` chain: resolvable, acyclic, holding what `PE_PARENT` entries need.
    Parent,
    /// Something the images may legally hold but cryo does not read.
    Unsupported,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Header => "header",
            Rule::Framing => "framing",
            Rule::Encoding => "encoding",
            Rule::Required => "required",
            Rule::MissingImage => "missing-image",
            Rule::Inventory => "inventory",
            Rule::Pstree => "pstree",
            Rule::Core => "core",
            Rule::FileRef => "file-ref",
            Rule::Vma => "vma",
            Rule::Pagemap => "pagemap",
            Rule::PagemapOutsideVma => "pagemap-outside-vma",
            Rule::PagesSize => "pages-size",
            Rule::Parent => "parent",
            Rule::Unsupported => "unsupported",
        }
    }
}

/// One broken rule, located as precisely as the rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub rule: Rule,
    /// File name inside the image directory (`core-42.img`), or a path for parent sets.
    pub file: String,
    /// Entry index inside the file, when the problem is in one entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    /// Dotted field path inside the entry (`vmas[3].end`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(entry) = self.entry {
            write!(f, ": entry {entry}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {} [{}]", self.message, self.rule.name())
    }
}

/// Everything found in one image directory.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dir: String,
    pub files_checked: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Validates the image set in `dir`.
pub fn validate_dir(dir: &Path) -> Report {
    let mut checker = Checker::new(dir);
    let files_checked = framing::check_files(&mut checker);
    if files_checked == 0 && !checker.problems.is_empty() {
        // The directory itself cannot be read: every other check would repeat that.
        return Report {
            dir: dir.display().to_string(),
            files_checked,
            problems: checker.problems,
        };
    }
    let tree = tree::check_tree(&mut checker);
    data::check_data(&mut checker, &tree);
    memory::check_memory(&mut checker, &tree);
    parent::check_parent(&mut checker, &tree);
    tracing::debug!(
        dir = %dir.display(),
        files_checked,
        problems = checker.problems.len(),
        "image set validated"
    );
    Report {
        dir: dir.display().to_string(),
        files_checked,
        problems: checker.problems,
    }
}

/// Shared state of the checks: the directory, the problems found so far, and which
/// (file, entry) pairs already have a problem (so later layers do not repeat them).
pub(crate) struct Checker {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
    faulty: HashSet<(String, Option<usize>)>,
}

impl Checker {
    fn new(dir: &Path) -> Checker {
        Checker {
            dir: dir.to_path_buf(),
            problems: Vec::new(),
            faulty: HashSet::new(),
        }
    }

    /// Records a problem.
    pub fn report(
        &mut self,
        rule: Rule,
        file: &str,
        entry: Option<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) {
        self.faulty.insert((file.to_owned(), entry));
        self.problems.push(Problem {
            rule,
            file: file.to_owned(),
            entry,
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    fn is_faulty(&self, file: &str, entry: Option<usize>) -> bool {
        self.faulty.contains(&(file.to_owned(), entry))
    }

    /// Whether `file` exists in the directory.
    pub fn exists(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }

    /// Reads every entry of `file` as `M`; `None` when the file cannot be read at all.
    ///
    /// An absent file is reported as a missing image when `required`, else it reads as
    /// empty. Faults already reported by the framing layer are skipped silently: entries
    /// that frame and check well but do not decode as `M` are reported here.
    pub fn read<M: prost::Message + Default>(
        &mut self,
        file: &str,
        magic: &'static Magic,
        required: bool,
    ) -> Option<Vec<(usize, M)>> {
        let path = self.dir.join(file);
        let image = match ImageFile::open_expect(&path, magic) {
            Ok(image) => image,
            Err(error) if error.is_not_found() => {
                if required {
                    self.report(
                        Rule::MissingImage,
                        file,
                        None,
                        None,
                        format!("the {} image is missing", magic.name),
                    );
                    return None;
                }
                return Some(Vec::new());
            }
            Err(error) => {
                if !self.is_faulty(file, None) {
                    self.report(Rule::Header, file, None, None, error.to_string());
                }
                return None;
            }
        };

        let mut out = Vec::new();
        for entry in image.entries() {
            let Ok(entry) = entry else { break };
            if self.is_faulty(file, Some(entry.index)) {
                continue;
            }
            match M::decode(entry.payload) {
                Ok(message) => out.push((entry.index, message)),
                Err(error) => self.report(
                    Rule::Encoding,
                    file,
                    Some(entry.index),
                    None,
                    format!(
                        "cannot decode {}: {error}",
                        entry.message.unwrap_or("entry")
                    ),
                ),
            }
        }
        Some(out)
    }

    /// Reads a single-entry image (core, mm, ids, fs, inventory).
    pub fn read_one<M: prost::Message + Default>(
        &mut self,
        file: &str,
        magic: &'static Magic,
    ) -> Option<M> {
        let entries = self.read::<M>(file, magic, true)?;
        let count = entries.len();
        let mut entries = entries.into_iter();
        match (entries.next(), count) {
            (Some((_, message)), 1) => Some(message),
            (Some((_, message)), _) => {
                self.report(
                    Rule::Framing,
                    file,
                    None,
                    None,
                    format!("holds {count} entries, expected exactly one"),
                );
                Some(message)
            }
            (None, _) => {
                if !self.is_faulty(file, Some(0)) && !self.is_faulty(file, None) {
                    self.report(Rule::Framing, file, None, None, "holds no entry");
                }
                None
            }
        }
    }
}

/// Maps an `ImageError` from opening or framing to the rule it breaks.
pub(crate) fn rule_of(error: &ImageError) -> Rule {
    match error {
        ImageError::Open { .. }
        | ImageError::Map { .. }
        | ImageError::TruncatedHeader { .. }
        | ImageError::UnknownMagic { .. }
        | ImageError::LegacyV1 { .. }
        | ImageError::WrongType { .. }
        | ImageError::WrongHeader { .. } => Rule::Header,
        ImageError::Wire { .. } | ImageError::Decode { .. } => Rule::Encoding,
        _ => Rule::Framing,
    }
}
