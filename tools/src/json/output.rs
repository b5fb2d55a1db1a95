//! Where command output goes: a file written whole or not at all, or stdout.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `<path>.imgtool-tmp-<pid>`, renamed into place only once
/// complete, so a failure never leaves a partial output file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".imgtool-tmp-{}", std::process::id()));
    let temp = path.with_file_name(name);
    let result = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes `bytes` to stdout.
pub fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// A scratch file that is removed when dropped (stdin images are mapped from one).
#[derive(Debug)]
pub struct ScratchFile {
    pub path: PathBuf,
}

impl ScratchFile {
    /// A fresh, not yet existing path in the temp directory.
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("imgtool-{tag}-{}-{nanos}", std::process::id()));
        ScratchFile { path }
    }

    /// A scratch file holding all of stdin.
    pub fn from_stdin() -> io::Result<Self> {
        let scratch = Self::new("stdin");
        let mut data = Vec::new();
        io::stdin().lock().read_to_end(&mut data)?;
        fs::write(&scratch.path, data)?;
        Ok(scratch)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
