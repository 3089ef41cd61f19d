//! Files: writing them so that a reader (or a crash) never sees half of
//! one, checking a run's outputs against its inputs before any work, and
//! reading a user's file with a bound whatever the file is.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Writes `bytes` to `path` atomically: into a temporary file in the same
/// directory, flushed to disk, then renamed over `path`, and the directory
/// synced. Until the rename, `path` keeps its previous content (or stays
/// absent); a crash leaves at worst a stray `.<name>.*.tmp` file beside it,
/// which the next write of `path` removes once it is [`STALE_AFTER`] old.
///
/// A symbolic link is followed: its target is replaced and the link stays.
/// A path that is (or links to) a directory, a device, a FIFO or a socket
/// is refused, and so is a directory that does not exist: this function
/// creates none.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve_links(path)?;
    if let Some(kind) = std::fs::metadata(&target).ok().and_then(|m| not_a_file(&m)) {
        bail!("{}: is {kind}; expected a regular file", path.display());
    }
    let dir = parent_dir(&target);
    let name = target.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    if !dir.is_dir() {
        bail!("{}: the directory {} does not exist", path.display(), dir.display());
    }
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
        let mode = std::fs::metadata(&target).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set permissions", tmp.path().display()))?;
    }
    tmp.as_file().sync_all().with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
    tmp.persist(&target).with_context(|| format!("{}: cannot rename the new file into place", path.display()))?;
    // Make the rename itself durable. Not every platform can sync a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `path` with every symbolic link at its end followed (the link's target,
/// which need not exist yet); `path` itself when it is no link.
///
/// A link is followed only where the kernel's own protection
/// (`fs.protected_symlinks`) would follow it for this process: not one in
/// a sticky, world-writable directory (such as `/tmp`) whose owner is
/// neither this process's user nor the directory's owner. kiln replaces a
/// link's target by rename, which that protection cannot see, so it
/// applies the rule itself: another user's link planted in `/tmp` at a
/// predictable output name can never make kiln overwrite a file of yours.
pub fn resolve_links(path: &Path) -> Result<PathBuf> {
    // Linux's own limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                refuse_planted_link(&p, &m)?;
                let to = std::fs::read_link(&p).with_context(|| format!("{}: cannot read the link", p.display()))?;
                p = if to.is_absolute() { to } else { parent_dir(&p).join(to) };
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: more than {MAX_LINKS} symbolic links in a row (a loop?)", path.display())
}

/// An error when the link `p` (whose metadata is `m`) sits in a sticky,
/// world-writable directory and belongs neither to this process's user
/// nor to the directory's owner (see [`resolve_links`]).
fn refuse_planted_link(p: &Path, m: &std::fs::Metadata) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = std::fs::metadata(parent_dir(p)) else { return Ok(()) };
        let shared = dir.mode() & 0o1002 == 0o1002; // sticky and world-writable
        if shared && m.uid() != dir.uid() && Some(m.uid()) != effective_uid() {
            bail!(
                "{}: a symbolic link owned by another user in a shared directory ({}); \
                 refusing to follow it",
                p.display(),
                parent_dir(p).display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (p, m);
    Ok(())
}

/// This process's effective user id, from `/proc/self/status` (Linux);
/// `None` where it cannot be read.
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// What a file that is not a regular file is, for an error message; `None`
/// for a regular file.
fn not_a_file(m: &std::fs::Metadata) -> Option<&'static str> {
    let t = m.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// A file named on a command line: the flag that named it and the path.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    /// The flag or role, as the user knows it (`--out`, `--data`).
    pub flag: &'a str,
    /// The path as the user spelled it.
    pub path: &'a Path,
}

impl<'a> Named<'a> {
    /// `path`, named by `flag`.
    pub fn new(flag: &'a str, path: &'a Path) -> Self {
        Named { flag, path }
    }
}

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.flag, self.path.display())
    }
}

/// What makes two paths the same file: its device and inode when it
/// exists, else where it will be (its directory's real path and its name).
#[derive(Debug, PartialEq, Eq)]
enum FileId {
    Inode(u64, u64),
    Path(PathBuf),
}

fn file_id(path: &Path) -> Result<FileId> {
    let target = resolve_links(path)?;
    if let Ok(m) = std::fs::metadata(&target) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            return Ok(FileId::Inode(m.dev(), m.ino()));
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            return Ok(FileId::Path(std::fs::canonicalize(&target)?));
        }
    }
    // Not there yet: the real path of its nearest existing ancestor, then
    // the rest as written (`..` taken lexically).
    let abs = std::path::absolute(&target).with_context(|| format!("{}: cannot resolve", path.display()))?;
    // `.` and `..` taken lexically first: `new/../new/m` and `new/m` are
    // one place even while `new` does not exist.
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let abs = lexical;
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    while !base.exists() {
        match (base.parent(), base.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_os_string());
                base = p;
            }
            _ => break,
        }
    }
    let mut id = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    for part in rest.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                id.pop();
            }
            Some(Component::CurDir) => {}
            _ => id.push(part),
        }
    }
    Ok(FileId::Path(id))
}

/// Whether `a` and `b` name the same file (see [`check_outputs`]: the
/// same device and inode, or the same place when neither exists yet).
pub fn same_file(a: &Path, b: &Path) -> Result<bool> {
    Ok(file_id(a)? == file_id(b)?)
}

/// Checks a run's outputs before any work, so that a run can neither
/// destroy what it reads nor fail after hours of training for want of a
/// writable directory:
/// - no output is the same file as another output or as any input,
///   compared as files (device and inode; hard links, symbolic links and
///   other spellings of one file are the same file);
/// - no output is, or links to, a directory, a device, a FIFO or a socket;
/// - every output's directory is writable (tried by creating and removing a
///   temporary file there) or, when missing, can be created below a
///   writable one.
///
/// Nothing is created or written. Returns the directories that do not
/// exist yet, for the caller to create (or refuse); each failure is one
/// line naming the paths.
pub fn check_outputs(outputs: &[Named<'_>], inputs: &[Named<'_>]) -> Result<Vec<PathBuf>> {
    let mut missing_dirs = Vec::new();
    let mut seen: Vec<(FileId, Named<'_>, bool)> = Vec::new();
    for input in inputs {
        seen.push((file_id(input.path)?, *input, false));
    }
    for out in outputs {
        let target = resolve_links(out.path)?;
        if let Some(kind) = std::fs::metadata(&target).ok().and_then(|m| not_a_file(&m)) {
            bail!("{out}: is {kind}; expected a regular file (or a path that does not exist yet)");
        }
        if target.file_name().is_none() {
            bail!("{out}: not a file path");
        }
        let id = file_id(out.path)?;
        if let Some((_, other, is_out)) = seen.iter().find(|(i, ..)| *i == id) {
            if *is_out {
                bail!("{out} and {other} are the same file; each output needs a file of its own");
            }
            bail!("{out} is the same file as the input {other}; writing it would destroy that input");
        }
        seen.push((id, *out, true));
        let dir = parent_dir(&target);
        let mut existing = dir;
        while !existing.exists() {
            let up = parent_dir(existing);
            if up == existing {
                break;
            }
            existing = up;
        }
        if !existing.is_dir() {
            bail!("{out}: {} is not a directory", existing.display());
        }
        tempfile::Builder::new()
            .prefix(".kiln-write-check.")
            .tempfile_in(existing)
            .with_context(|| format!("{out}: cannot write in the directory {}", existing.display()))?;
        if existing != dir && !missing_dirs.iter().any(|d: &PathBuf| d == dir) {
            missing_dirs.push(dir.to_path_buf());
        }
    }
    Ok(missing_dirs)
}

/// Reads the whole of `path`, at most `cap` bytes: a larger file is an
/// error naming `what` (e.g. "the model file") and the cap. The bound holds
/// whatever the path is (a device such as `/dev/zero` or a pipe reports a
/// size of 0 and never ends), since the read itself stops one byte past
/// the cap.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("{}: cannot read {what}", path.display()))?;
    let too_big = |size: String| anyhow::anyhow!("{}: {size}; at most {cap} bytes are read for {what}", path.display());
    if let Ok(m) = file.metadata() {
        if m.is_dir() {
            bail!("{}: is a directory; expected {what}", path.display());
        }
        if m.is_file() && m.len() > cap {
            return Err(too_big(format!("is {} bytes", m.len())));
        }
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read {what}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(too_big("holds more".to_string()));
    }
    Ok(bytes)
}

/// [`read_capped`] for files that must be regular files (models,
/// checkpoints, datasets): a device, a FIFO or a socket is refused before
/// anything is read, so `--init /dev/zero` costs nothing.
pub fn read_regular(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    if let Ok(m) = std::fs::metadata(path) {
        if let Some(kind) = not_a_file(&m) {
            bail!("{}: is {kind}; expected {what}", path.display());
        }
    }
    read_capped(path, cap, what)
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
        let err = write_atomic(&p, b"one").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!p.parent().unwrap().exists(), "a library write creates no directory");
        std::fs::create_dir(p.parent().unwrap()).unwrap();
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

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("real.bin"), dir.path().join("link.bin"));
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link: its target is created.
        std::os::unix::fs::symlink("later.bin", dir.path().join("dangling.bin")).unwrap();
        write_atomic(&dir.path().join("dangling.bin"), b"x").unwrap();
        assert_eq!(std::fs::read(dir.path().join("later.bin")).unwrap(), b"x");
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("loop2", dir.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", dir.path().join("loop2")).unwrap();
        let err = write_atomic(&dir.path().join("loop1"), b"x").unwrap_err().to_string();
        assert!(err.contains("symbolic links in a row"), "{err}");
    }

    /// Another user's link in a sticky, world-writable directory (a planted
    /// `/tmp/m.metrics.jsonl -> ~/.bashrc`) is not followed; one's own is.
    #[cfg(unix)]
    #[test]
    fn a_planted_link_in_a_shared_directory_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("tmp");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = dir.path().join("bashrc");
        std::fs::write(&victim, b"mine").unwrap();
        let link = shared.join("m.metrics.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"own link: followed").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"own link: followed");
        // Only root can give the link to another user.
        if std::os::unix::fs::lchown(&link, Some(54321), None).is_err() {
            eprintln!("skipped the planted case: cannot chown (not root)");
            return;
        }
        let err = write_atomic(&link, b"planted").unwrap_err().to_string();
        assert!(err.contains("owned by another user in a shared directory"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"own link: followed", "the target is untouched");
        let err = check_outputs(&[Named::new("--metrics", &link)], &[]).unwrap_err().to_string();
        assert!(err.contains("refusing to follow it"), "{err}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        #[cfg(unix)]
        {
            let null = Path::new("/dev/null");
            let err = write_atomic(null, b"x").unwrap_err().to_string();
            assert!(err.contains("is a character device"), "{err}");
            use std::os::unix::fs::FileTypeExt;
            assert!(std::fs::metadata(null).unwrap().file_type().is_char_device(), "/dev/null is left as it was");
        }
    }

    #[test]
    fn outputs_are_checked_against_each_other_and_the_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data.idx");
        std::fs::write(&data, b"input").unwrap();
        let (model, metrics) = (d.join("m.safetensors"), d.join("m.metrics.jsonl"));
        let input = [Named::new("--data", &data)];
        // Distinct files: fine, nothing written.
        let ok = [Named::new("--out", &model), Named::new("--metrics", &metrics)];
        assert!(check_outputs(&ok, &input).unwrap().is_empty());
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        assert_eq!(names(d), [std::ffi::OsString::from("data.idx")]);
        // Two outputs, one file, spelled differently.
        let other = d.join(".").join("m.safetensors");
        let err = check_outputs(&[Named::new("--out", &model), Named::new("--metrics", &other)], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--metrics") && err.contains("--out") && err.contains("same file"), "{err}");
        // An output that is an input, through a hard link and a symlink.
        let hard = d.join("hard.bin");
        std::fs::hard_link(&data, &hard).unwrap();
        let err = check_outputs(&[Named::new("--out", &hard)], &input).unwrap_err().to_string();
        assert!(err.contains("destroy") && err.contains("--data"), "{err}");
        #[cfg(unix)]
        {
            let link = d.join("link.bin");
            std::os::unix::fs::symlink(&data, &link).unwrap();
            let err = check_outputs(&[Named::new("--chart", &link)], &input).unwrap_err().to_string();
            assert!(err.contains("--chart") && err.contains("--data"), "{err}");
        }
        assert_eq!(std::fs::read(&data).unwrap(), b"input");
        // A directory, and a missing directory reported for the caller.
        let err = check_outputs(&[Named::new("--out", d)], &[]).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let spelled = d.join("new").join("..").join("new").join("m.bin");
        let err =
            check_outputs(&[Named::new("--out", &d.join("new").join("m.bin")), Named::new("--metrics", &spelled)], &[])
                .unwrap_err()
                .to_string();
        assert!(err.contains("same file"), "a missing directory spelled two ways: {err}");
        let deep = d.join("new").join("deeper").join("m.bin");
        assert_eq!(check_outputs(&[Named::new("--out", &deep)], &[]).unwrap(), [d.join("new").join("deeper")]);
        assert!(!d.join("new").exists());
    }

    #[test]
    fn capped_reads_stop_at_the_cap_whatever_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 10]).unwrap();
        assert_eq!(read_capped(&p, 10, "files").unwrap().len(), 10);
        let err = read_capped(&p, 9, "a test file").unwrap_err().to_string();
        assert!(err.contains("is 10 bytes; at most 9 bytes are read for a test file"), "{err}");
        #[cfg(unix)]
        {
            // Reports size 0 and never ends: the cap must still hold.
            let err = read_capped(Path::new("/dev/zero"), 1 << 20, "an image").unwrap_err().to_string();
            assert!(err.contains("holds more; at most 1048576 bytes are read for an image"), "{err}");
            // Where only a regular file makes sense, a device is refused unread.
            let err = read_regular(Path::new("/dev/zero"), 8 << 30, "a model file").unwrap_err().to_string();
            assert!(err.contains("is a character device; expected a model file"), "{err}");
        }
    }
}
