//! Reading a file whose name came from outside (a plugin path from a
//! client, a command-line flag), without letting the name choose how the
//! read behaves.
//!
//! Why not `std::fs::read`: a path can name a FIFO with no writer (opening
//! it blocks forever), `/dev/zero` (its size reads as 0, and it never
//! ends) or a device. So the file is opened without blocking, must be a
//! regular file, and is read through a limit one byte past the largest
//! size accepted, so that a file growing under the reader cannot make the
//! read unbounded either.

use std::io::Read;

use anyhow::{anyhow, bail};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The bytes of the regular file at `path`, at most `max` of them; an
/// error in words otherwise (not found, not a regular file, too large).
/// Blocking: call it off async workers.
pub fn read_regular_file(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer; it is then
        // refused below as not a regular file.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > max as u64 {
        return Err(format!("{} bytes, over the limit of {max}", meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() > max {
        return Err(format!("larger than the limit of {max} bytes"));
    }
    Ok(bytes)
}

/// A CSV file as the trace and node-list readers take it: a header, then
/// rows of as many fields, split on commas (none of the traces and lists
/// read quotes a field). Errors name the file and the line.
pub(crate) struct Csv<'a> {
    name: &'a str,
    /// The header's column names.
    pub(crate) columns: Vec<&'a str>,
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
}

impl<'a> Csv<'a> {
    pub(crate) fn new(name: &'a str, text: &'a str) -> anyhow::Result<Csv<'a>> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .ok_or_else(|| anyhow!("{name}: empty file, expected a CSV header"))?;
        let columns = header.split(',').map(str::trim).collect();
        Ok(Csv { name, columns, lines })
    }

    pub(crate) fn find(&self, col: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.eq_ignore_ascii_case(col))
    }

    pub(crate) fn need(&self, col: &str) -> anyhow::Result<usize> {
        self.find(col).ok_or_else(|| {
            anyhow!(
                "{}:1: the header has no `{col}` column (it has: {})",
                self.name,
                crate::bounds::shown(&self.columns.join(", "))
            )
        })
    }

    /// The next non-blank row: its line number and fields.
    pub(crate) fn row(&mut self) -> anyhow::Result<Option<(usize, Vec<&'a str>)>> {
        for (i, line) in self.lines.by_ref() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != self.columns.len() {
                bail!(
                    "{}:{n}: {} fields, the header has {}",
                    self.name,
                    fields.len(),
                    self.columns.len()
                );
            }
            return Ok(Some((n, fields)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plugin.wasm");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular_file(&file, 5).unwrap(), b"12345");
        assert!(read_regular_file(&file, 4).unwrap_err().contains("over the limit"));
        assert!(
            read_regular_file(dir.path(), 100)
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(
            read_regular_file(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .contains("not a regular file")
        );
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer: refused at once, not a hang.
        assert!(
            read_regular_file(&fifo, 100)
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(read_regular_file(&dir.path().join("missing"), 100).is_err());
    }
}
