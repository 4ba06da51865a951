//! Writing files so that a crash never leaves half of one, and keys are
//! readable by their owner alone.

use crate::error::{CertError, Result, io_err};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a file that must not exist yet, with `mode`, and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists(path.to_owned())
            } else {
                CertError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Replaces a file whole: writes a temporary sibling, syncs it, renames it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename is durable only once the directory is synced.
    if let Some(Ok(dir)) = path.parent().map(std::fs::File::open) {
        let _ = dir.sync_all();
    }
    Ok(())
}
