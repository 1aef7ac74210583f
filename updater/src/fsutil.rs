//! Durable small-file writes.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, UpdaterError};

/// Writes `bytes` to `path` so that after a crash the file is either old or new, never torn.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(UpdaterError::io(dir))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(UpdaterError::io(dir))?;
    temp.write_all(bytes).map_err(UpdaterError::io(path))?;
    temp.as_file().sync_all().map_err(UpdaterError::io(path))?;
    temp.persist(path)
        .map_err(|err| UpdaterError::io(path)(err.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(UpdaterError::io(dir))?;
    Ok(())
}
