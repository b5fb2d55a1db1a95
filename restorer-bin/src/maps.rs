//! Reading `/proc/PID/maps` of a child we are about to rebuild.
//!
//! The restorer only needs the address ranges and the names of the kernel's special
//! mappings (`[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`), so this is a small
//! line parser rather than a general /proc library.

use std::path::PathBuf;

/// Errors reading a maps file.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: cannot parse {text:?}")]
    Parse {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// One line of a maps file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// The path or pseudo-name column; empty for anonymous memory.
    pub name: String,
}

impl Mapping {
    /// Whether this is one of the kernel's vdso-related mappings that must be moved,
    /// not unmapped.
    pub fn is_vdso_family(&self) -> bool {
        matches!(self.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]")
    }
}

/// Reads the mappings of `pid`, in address order.
pub fn read(pid: i32) -> Result<Vec<Mapping>, MapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(|source| MapsError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text).map_err(|(line, text)| MapsError::Parse { path, line, text })
}

/// Parses maps text; on failure returns the 1-based line number and the line.
pub fn parse(text: &str) -> Result<Vec<Mapping>, (usize, String)> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bad = || (index + 1, line.to_string());
        let mut fields = line.splitn(6, ' ');
        let range = fields.next().ok_or_else(bad)?;
        let (start, end) = range.split_once('-').ok_or_else(bad)?;
        let start = u64::from_str_radix(start, 16).map_err(|_| bad())?;
        let end = u64::from_str_radix(end, 16).map_err(|_| bad())?;
        // perms, offset, dev, inode, then the padded name column.
        let name = fields.nth(4).unwrap_or("").trim_start().to_string();
        out.push(Mapping { start, end, name });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_anonymous_lines() {
        let text = "559a0000-559a1000 r--p 00000000 fe:00 12 /usr/bin/cat\n\
                    7f00-7f10 rw-p 00000000 00:00 0 \n\
                    7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]\n";
        let maps = parse(text).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].name, "/usr/bin/cat");
        assert_eq!(maps[1].name, "");
        assert_eq!((maps[1].start, maps[1].end), (0x7f00, 0x7f10));
        assert!(maps[2].is_vdso_family());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse("zz-10 r--p").unwrap_err().0, 1);
    }

    #[test]
    fn reads_own_maps_with_vdso() {
        let maps = read(std::process::id() as i32).unwrap();
        assert!(maps.iter().any(|m| m.name == "[vdso]"));
    }
}
