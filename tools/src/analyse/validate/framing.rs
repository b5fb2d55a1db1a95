//! Layer 1: headers, framing and per-entry encoding of every image file.

use cryo_format::ImageFile;
use cryo_format::image::ImageError;
use cryo_format::magic::{self, Header};
use cryo_format::validate::ValidateError;

use super::{Checker, Rule, rule_of};

/// Names of image files without the `.img` suffix.
const SERVICE_FILES: [&str; 3] = ["stats-dump", "stats-restore", "irmap-cache"];

/// Whether `name` matches a magic table file pattern such as `core-%u.img`.
pub(crate) fn matches_pattern(pattern: &str, name: &str) -> bool {
    let Some((prefix, rest)) = pattern.split_once('%') else {
        return pattern == name;
    };
    let Some((conversion, suffix)) = rest
        .strip_prefix("lu")
        .map(|suffix| ('u', suffix))
        .or_else(|| rest.strip_prefix('u').map(|suffix| ('u', suffix)))
        .or_else(|| rest.strip_prefix('x').map(|suffix| ('x', suffix)))
        .or_else(|| rest.strip_prefix('d').map(|suffix| ('u', suffix)))
    else {
        return false;
    };
    let Some(middle) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    !middle.is_empty()
        && match conversion {
            'x' => middle.chars().all(|c| c.is_ascii_hexdigit()),
            _ => middle.chars().all(|c| c.is_ascii_digit()),
        }
}

/// Whether `name` is a raw pages image (`pages-N.img`), checked by the memory layer.
pub(crate) fn is_pages_image(name: &str) -> bool {
    matches_pattern("pages-%u.img", name)
}

/// Checks every image file of the directory; returns how many files were checked.
pub(crate) fn check_files(checker: &mut Checker) -> usize {
    let listing = match std::fs::read_dir(&checker.dir) {
        Ok(listing) => listing,
        Err(error) => {
            let dir = checker.dir.display().to_string();
            checker.report(
                Rule::MissingImage,
                &dir,
                None,
                None,
                format!("cannot list the image directory: {error}"),
            );
            return 0;
        }
    };
    let mut names: Vec<String> = listing
        .flatten()
        .filter(|item| item.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|item| item.file_name().into_string().ok())
        .filter(|name| {
            (name.ends_with(".img") && !is_pages_image(name))
                || SERVICE_FILES.contains(&name.as_str())
        })
        .collect();
    names.sort();

    for name in &names {
        check_file(checker, name);
    }
    names.len()
}

fn check_file(checker: &mut Checker, name: &str) {
    let image = match ImageFile::open(checker.dir.join(name)) {
        Ok(image) => image,
        Err(error) => {
            checker.report(rule_of(&error), name, None, None, error.to_string());
            return;
        }
    };

    // The name says which type the file must hold (`core-1.img` is a CORE image).
    let found = image.magic();
    let expected: Vec<&str> = magic::MAGICS
        .iter()
        .filter(|m| m.header != Header::Raw && matches_pattern(m.file, name))
        .map(|m| m.name)
        .collect();
    let fits = expected.is_empty()
        || magic::MAGICS
            .iter()
            .filter(|m| m.value == found.value)
            .any(|m| expected.contains(&m.name));
    if !fits {
        checker.report(
            Rule::Header,
            name,
            None,
            None,
            format!(
                "holds a {} image, but its name is that of a {} image",
                found.name,
                expected.join("/")
            ),
        );
        return;
    }

    for entry in image.entries() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let index = entry_index(&error);
                checker.report(rule_of(&error), name, index, None, error.to_string());
                return;
            }
        };
        if let Err(error) = image.check(&entry) {
            let (rule, field, message) = match &error {
                ImageError::Invalid {
                    source: ValidateError::MissingRequired { message, field },
                    ..
                } => (
                    Rule::Required,
                    Some(field.as_str()),
                    format!("required field {field} of {message} is missing"),
                ),
                ImageError::Invalid {
                    source: ValidateError::WireType { field, .. },
                    ..
                } => (Rule::Encoding, Some(field.as_str()), error.to_string()),
                _ => (Rule::Encoding, None, error.to_string()),
            };
            checker.report(rule, name, Some(entry.index), field, message);
        }
    }
}

/// The entry index a framing error names.
fn entry_index(error: &ImageError) -> Option<usize> {
    match error {
        ImageError::TruncatedLength { index, .. }
        | ImageError::AbsurdLength { index, .. }
        | ImageError::EntryPastEnd { index, .. }
        | ImageError::ExtraPastEnd { index, .. }
        | ImageError::ExtraFieldMissing { index, .. }
        | ImageError::ExtraMalformed { index, .. }
        | ImageError::Wire { index, .. }
        | ImageError::Decode { index, .. }
        | ImageError::Invalid { index, .. } => Some(*index),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_patterns_match_decimal_and_hex_ids() {
        assert!(matches_pattern("core-%u.img", "core-13131.img"));
        assert!(!matches_pattern("core-%u.img", "core-.img"));
        assert!(!matches_pattern("core-%u.img", "core-12a.img"));
        assert!(matches_pattern("pagemap-%lu.img", "pagemap-7.img"));
        assert!(matches_pattern("ghost-file-%x.img", "ghost-file-1f.img"));
        assert!(matches_pattern("files.img", "files.img"));
        assert!(!matches_pattern("pagemap-%lu.img", "pagemap-shmem-3.img"));
    }
}
