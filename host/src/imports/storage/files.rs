//! File operations on granted paths. Writes are atomic where the file system
//! allows: a temporary file in the same directory, fsynced, renamed over the
//! target. Symbolic links are switched the same way (the classic release
//! switch).

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{fsync_dir, io_failed, millis, utf8};
use crate::bindings::storage::{DirEntry, EntryKind};
use crate::bindings::types::Error;
use crate::state::PluginEnv;

/// `list-dir` returns at most this many entries.
pub const LIST_CAP: usize = 100_000;

/// The path of an entry as the plugin named it, with a symbolic link in the
/// last component not followed, checked against the `read` grants: a link
/// is readable when the directory holding it is.
fn check_read_entry(env: &PluginEnv, raw: &str) -> Result<PathBuf, Error> {
    let entry = crate::sandbox::resolve_entry(env.sandbox.base_dir(), raw)
        .map_err(|e| Error::invalid(format!("path {raw:?}: {e}")))?;
    let is_link = fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
    match entry.parent() {
        Some(parent) if is_link => {
            env.sandbox.check_read(&parent.to_string_lossy())?;
            Ok(entry)
        }
        _ => Ok(env.sandbox.check_read(raw)?),
    }
}

pub fn read_file(env: &PluginEnv, path: &str) -> Result<Vec<u8>, Error> {
    let p = env.sandbox.check_read(path)?;
    let file = File::open(&p).map_err(|e| io_failed("read", &p, &e))?;
    let md = file.metadata().map_err(|e| io_failed("read", &p, &e))?;
    if md.is_dir() {
        return Err(Error::failed(format!(
            "cannot read {}: Is a directory",
            p.display()
        )));
    }
    // At most cap + 1 bytes are read, whatever the size says: /proc files
    // and devices like /dev/zero report 0 and never end.
    let cap = env.limits.read_bytes as u64;
    let too_big = |n: &str| {
        Error::invalid(format!(
            "cannot read {}: {n} is more than the read-file limit of {} (raise [limits] read_bytes in the runbook if that is expected)",
            p.display(),
            crate::runtime::show_bytes(env.limits.read_bytes)
        ))
    };
    if md.len() > cap {
        return Err(too_big(&format!("{} bytes", md.len())));
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_failed("read", &p, &e))?;
    if buf.len() as u64 > cap {
        return Err(too_big("its content (it did not end)"));
    }
    Ok(buf)
}

/// Replace `target` atomically with what `fill` writes: a temporary file in
/// the same directory (created with `new_mode`, less the umask), fsynced and
/// renamed over it. An existing file keeps its permissions (and owner when
/// allowed). Parent directories are created. Returns what `fill` returns.
pub(crate) fn atomic_write(
    target: &Path,
    new_mode: u32,
    fill: impl FnOnce(&mut File) -> Result<u64, Error>,
) -> Result<u64, Error> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(Error::invalid(format!(
            "cannot write {}: not a file path",
            target.display()
        )));
    };
    let existing = match fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() => {
            return Err(Error::failed(format!(
                "cannot write {}: Is a directory",
                target.display()
            )));
        }
        Ok(md) => md.is_file().then_some(md),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_failed("write", target, &e)),
    };
    fs::create_dir_all(parent).map_err(|e| io_failed("create directory", parent, &e))?;
    let name: String = name.to_string_lossy().chars().take(64).collect();
    let prefix = format!(".{name}.rewind-");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(new_mode))
        .tempfile_in(parent)
        .map_err(|e| io_failed("create a temporary file in", parent, &e))?;
    let n = fill(tmp.as_file_mut())?;
    let failed = |e: io::Error| io_failed("write", target, &e);
    if let Some(md) = existing {
        let now = tmp.as_file().metadata().map_err(failed)?;
        if (md.uid(), md.gid()) != (now.uid(), now.gid()) {
            let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(md.uid()), Some(md.gid()));
        }
        tmp.as_file()
            .set_permissions(md.permissions())
            .map_err(failed)?;
    }
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(target)
        .map_err(|e| io_failed("replace", target, &e.error))?;
    let _ = fsync_dir(parent);
    Ok(n)
}

/// Files are written whole; a directory in the way is an error, reported
/// before anything is recorded.
fn refuse_dir(p: &Path) -> Result<(), Error> {
    if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        return Err(Error::failed(format!(
            "cannot write {}: Is a directory",
            p.display()
        )));
    }
    Ok(())
}

pub fn write_file(env: &PluginEnv, path: &str, contents: &[u8]) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    refuse_dir(&p)?;
    if !env.side_effect(format!("write {} bytes to {}", contents.len(), p.display())) {
        return Ok(());
    }
    atomic_write(&p, 0o666, |f| {
        f.write_all(contents)
            .map_err(|e| io_failed("write", &p, &e))?;
        Ok(contents.len() as u64)
    })?;
    Ok(())
}

/// Returns the bytes copied (in dry runs, the size of the source).
pub fn copy(env: &PluginEnv, source: &str, target: &str) -> Result<u64, Error> {
    let src = env.sandbox.check_read(source)?;
    let dst = env.sandbox.check_write(target)?;
    let mut file = File::open(&src).map_err(|e| io_failed("read", &src, &e))?;
    let md = file.metadata().map_err(|e| io_failed("read", &src, &e))?;
    if !md.is_file() {
        return Err(Error::invalid(format!(
            "cannot copy {}: not a regular file",
            src.display()
        )));
    }
    if src == dst {
        return Err(Error::invalid(format!(
            "cannot copy {} onto itself",
            src.display()
        )));
    }
    refuse_dir(&dst)?;
    if !env.side_effect(format!(
        "copy {} to {} ({} bytes)",
        src.display(),
        dst.display(),
        md.len()
    )) {
        return Ok(md.len());
    }
    atomic_write(&dst, md.mode() & 0o7777, |f| {
        io::copy(&mut file, f).map_err(|e| {
            Error::failed(format!(
                "cannot copy {} to {}: {}",
                src.display(),
                dst.display(),
                super::os_message(&e)
            ))
        })
    })
}

pub fn rename(env: &PluginEnv, source: &str, target: &str) -> Result<(), Error> {
    let src = env.sandbox.check_write(source)?;
    let dst = env.sandbox.check_write(target)?;
    if let Err(e) = fs::symlink_metadata(&src) {
        return Err(io_failed("rename", &src, &e));
    }
    if !env.side_effect(format!("rename {} to {}", src.display(), dst.display())) {
        return Ok(());
    }
    fs::rename(&src, &dst).map_err(|e| {
        Error::failed(format!(
            "cannot rename {} to {}: {}",
            src.display(),
            dst.display(),
            super::os_message(&e)
        ))
    })?;
    for dir in [src.parent(), dst.parent()].into_iter().flatten() {
        let _ = fsync_dir(dir);
    }
    Ok(())
}

/// Remove a file, a symbolic link (not what it points to) or a directory
/// with everything in it.
pub fn remove(env: &PluginEnv, path: &str) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    let md = fs::symlink_metadata(&p).map_err(|e| io_failed("remove", &p, &e))?;
    let what = if md.is_dir() { "directory " } else { "" };
    if !env.side_effect(format!("remove {what}{}", p.display())) {
        return Ok(());
    }
    let r = if md.is_dir() {
        fs::remove_dir_all(&p)
    } else {
        fs::remove_file(&p)
    };
    r.map_err(|e| io_failed("remove", &p, &e))?;
    if let Some(parent) = p.parent() {
        let _ = fsync_dir(parent);
    }
    Ok(())
}

pub fn make_dir(env: &PluginEnv, path: &str) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    if p.is_dir() {
        return Ok(());
    }
    if !env.side_effect(format!("create directory {}", p.display())) {
        return Ok(());
    }
    fs::create_dir_all(&p).map_err(|e| io_failed("create directory", &p, &e))
}

fn dir_entry(path: &Path, md: &Metadata) -> DirEntry {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    DirEntry {
        path: path.to_string_lossy().into_owned(),
        kind,
        size: md.len(),
        modified_ms: md.modified().map(millis).unwrap_or(0),
    }
}

/// Entries under a directory, sorted by path. Symbolic links are listed as
/// links and never followed.
pub fn list_dir(env: &PluginEnv, path: &str, recursive: bool) -> Result<Vec<DirEntry>, Error> {
    let p = env.sandbox.check_read(path)?;
    let md = fs::metadata(&p).map_err(|e| io_failed("list", &p, &e))?;
    if !md.is_dir() {
        return Err(Error::failed(format!(
            "cannot list {}: Not a directory",
            p.display()
        )));
    }
    let mut out = Vec::new();
    let mut pending = vec![p.clone()];
    while let Some(dir) = pending.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| io_failed("list", &dir, &e))?;
        for e in rd {
            let e = e.map_err(|e| io_failed("list", &dir, &e))?;
            let child = e.path();
            let md = match fs::symlink_metadata(&child) {
                Ok(md) => md,
                // Removed between the listing and the stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_failed("stat", &child, &e)),
            };
            if out.len() >= LIST_CAP {
                return Err(Error::invalid(format!(
                    "{} holds more than {LIST_CAP} entries; list a smaller directory",
                    p.display()
                )));
            }
            if recursive && md.is_dir() {
                pending.push(child.clone());
            }
            out.push(dir_entry(&child, &md));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Metadata of a path, `None` when nothing is there. A symbolic link is
/// described itself (kind `symlink`), not what it points to.
pub fn stat(env: &PluginEnv, path: &str) -> Result<Option<DirEntry>, Error> {
    let p = check_read_entry(env, path)?;
    match fs::symlink_metadata(&p) {
        Ok(md) => Ok(Some(dir_entry(&p, &md))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_failed("stat", &p, &e)),
    }
}

/// Make `link` point at `target`: a new link under a temporary name in the
/// link's directory, renamed over `link`, so readers see the old target or
/// the new one and never nothing. `target` is stored as given (a relative
/// target is relative to the link's directory) and must be readable.
pub fn symlink(env: &PluginEnv, target: &str, link: &str) -> Result<(), Error> {
    if target.is_empty() {
        return Err(Error::invalid("empty symbolic link target"));
    }
    let l = env.sandbox.check_write(link)?;
    let (Some(dir), Some(name)) = (l.parent(), l.file_name()) else {
        return Err(Error::invalid(format!(
            "cannot make a symbolic link at {}",
            l.display()
        )));
    };
    let resolved_target = if Path::new(target).is_absolute() {
        PathBuf::from(target)
    } else {
        dir.join(target)
    };
    env.sandbox.check_read(utf8(&resolved_target)?)?;
    if fs::symlink_metadata(&l).is_ok_and(|m| m.is_dir()) {
        return Err(Error::failed(format!(
            "cannot make {} a symbolic link: it is a directory",
            l.display()
        )));
    }
    if !env.side_effect(format!("point {} at {target}", l.display())) {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_failed("create directory", dir, &e))?;
    let name: String = name.to_string_lossy().chars().take(64).collect();
    let prefix = format!(".{name}.rewind-");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(dir, |p| std::os::unix::fs::symlink(target, p))
        .map_err(|e| io_failed("create a symbolic link in", dir, &e))?;
    tmp.persist(&l)
        .map_err(|e| io_failed("replace", &l, &e.error))?;
    let _ = fsync_dir(dir);
    Ok(())
}

pub fn read_link(env: &PluginEnv, path: &str) -> Result<String, Error> {
    let p = check_read_entry(env, path)?;
    let target = fs::read_link(&p).map_err(|e| io_failed("read link", &p, &e))?;
    Ok(utf8(&target)?.to_string())
}
