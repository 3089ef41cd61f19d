//! Writing files so that a reader (or a crash) never sees half of one.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Writes `bytes` to `path` atomically: into a temporary file in the same
/// directory, flushed to disk, then renamed over `path`, and the directory
/// synced. Until the rename, `path` keeps its previous content (or stays
/// absent); a crash leaves at worst a stray `.<name>.*.tmp` file beside it,
/// which the next write of `path` removes once it is [`STALE_AFTER`] old.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    let prefix = format!(".{}.", name.to_string_lossy());
    remove_stale_temps(dir, &prefix, ".tmp");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    // A temporary file is private (0600); give the result the permissions
    // of the file it replaces, or the usual 0644 for a new one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set permissions", tmp.path().display()))?;
    }
    tmp.as_file().sync_all().with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("{}: cannot rename the new file into place", path.display()))?;
    // Make the rename itself durable. Not every platform can sync a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How old a temporary file of kiln's must be before it is taken for the
/// leftover of a killed run: writing one takes seconds, so a concurrent
/// writer's file is never this old.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// Removes the files of `dir` named `<prefix>XXXXXX<suffix>` (the pattern
/// kiln's temporary files have, `XXXXXX` being tempfile's 6 random
/// characters) last modified at least [`STALE_AFTER`] ago: leftovers of a
/// run killed mid-write. Best effort: returns how many were removed, and
/// anything it cannot read or remove is left alone.
pub fn remove_stale_temps(dir: &Path, prefix: &str, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(middle) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)) else { continue };
        if middle.len() != 6 || !middle.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= STALE_AFTER);
        if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("m.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.bin")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            write_atomic(&p, b"three").unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640, "kept on replace");
        }
    }

    #[test]
    fn stale_temporaries_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.bin");
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(1);
        let make = |name: &str, modified: SystemTime| {
            let f = File::create(dir.path().join(name)).unwrap();
            f.set_modified(modified).unwrap();
        };
        make(".m.bin.aB3xY9.tmp", old); // a killed run's leftover: removed
        make(".m.bin.Qw12Er.tmp", SystemTime::now()); // a concurrent writer's: kept
        make(".other.bin.aB3xY9.tmp", old); // another file's: kept
        make("m.bin.keep.tmp", old); // not kiln's pattern: kept
        write_atomic(&p, b"new").unwrap();
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, [".m.bin.Qw12Er.tmp", ".other.bin.aB3xY9.tmp", "m.bin", "m.bin.keep.tmp"]);
    }
}
