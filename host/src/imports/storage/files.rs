//! File operations on granted paths. Writes are atomic where the file system
//! allows: a temporary file in the same directory, fsynced, renamed over the
//! target. Symbolic links are switched the same way (the classic release
//! switch).
//!
//! Paths are checked by name (`Sandbox::check_*`, which gives the clear
//! refusals), then used by capability: every access goes through a handle
//! on the grant's directory and resolves beneath it
//! (`Sandbox::beneath`), so a link or rename made between the check and
//! the access cannot take it outside the grant.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::fs::{Dir, Metadata, MetadataExt as _, OpenOptions, OpenOptionsExt as _};

use super::{io_failed, millis, utf8};
use crate::bindings::storage::{DirEntry, EntryKind};
use crate::bindings::types::Error;
use crate::sandbox::{Beneath, Capability};
use crate::state::PluginEnv;

/// `list-dir` returns at most this many entries.
pub const LIST_CAP: usize = 100_000;

/// The grant's directory handle for a checked path.
fn beneath(env: &PluginEnv, cap: Capability, p: &Path) -> Result<Beneath, Error> {
    env.sandbox
        .beneath(cap, p)
        .map_err(|e| io_failed("open the grant holding", p, &e))
}

/// The directory holding a checked entry (opened beneath the grant) and the
/// entry's name.
fn parent_of(b: &Beneath, p: &Path) -> Result<(Dir, OsString), Error> {
    b.parent()
        .map_err(|e| io_failed("open the directory of", p, &e))?
        .ok_or_else(|| Error::invalid(format!("{} is not a file path", p.display())))
}

/// The path of an entry as the plugin named it, with a symbolic link in the
/// last component not followed, checked against the `read` grants: a link
/// is readable when the directory holding it is.
fn check_read_entry(env: &PluginEnv, raw: &str) -> Result<PathBuf, Error> {
    let entry = crate::sandbox::resolve_entry(env.sandbox.base_dir(), raw)
        .map_err(|e| Error::invalid(format!("path {raw:?}: {e}")))?;
    let is_link = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
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
    let b = beneath(env, Capability::Read, &p)?;
    // Non-blocking, so that opening a FIFO with no writer (which would
    // block until one comes, holding the host past any deadline) returns
    // at once and is refused below by its type.
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits());
    let file = b
        .dir
        .open_with(b.path(), &opts)
        .map_err(|e| io_failed("read", &p, &e))?
        .into_std();
    let md = file.metadata().map_err(|e| io_failed("read", &p, &e))?;
    if md.is_dir() {
        return Err(Error::failed(format!(
            "cannot read {}: Is a directory",
            p.display()
        )));
    }
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = md.file_type();
        if t.is_fifo() || t.is_socket() {
            return Err(Error::invalid(format!(
                "cannot read {}: it is a {}, which can block forever; read-file reads files (and devices)",
                p.display(),
                if t.is_fifo() {
                    "FIFO (named pipe)"
                } else {
                    "socket"
                }
            )));
        }
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

/// A name for a temporary entry next to `name`: `.<name>.rewind-<n>.tmp`.
fn temp_name(name: &OsString) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let short: String = name.to_string_lossy().chars().take(64).collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".{short}.rewind-{:x}{:x}{:x}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Removes a temporary entry unless it was renamed into place.
struct TempEntry<'a> {
    dir: &'a Dir,
    name: String,
    armed: bool,
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

/// Create a new entry with a fresh temporary name in `dir` by `make`,
/// retrying on a name that is taken.
fn make_temp<'a>(
    dir: &'a Dir,
    name: &OsString,
    mut make: impl FnMut(&str) -> io::Result<()>,
) -> io::Result<TempEntry<'a>> {
    let mut last = None;
    for _ in 0..16 {
        let tmp = temp_name(name);
        match make(&tmp) {
            Ok(()) => {
                return Ok(TempEntry {
                    dir,
                    name: tmp,
                    armed: true,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// Make a rename or a new entry in `dir` durable.
fn fsync(dir: &Dir) -> io::Result<()> {
    crate::sandbox::open_dir_file(dir, Path::new(""))?.sync_all()
}

/// Replace the checked path `target` (held by `b`) atomically with what
/// `fill` writes: a temporary file in the same directory (created with
/// `new_mode`, less the umask), fsynced and renamed over it, all beneath
/// the grant. An existing file keeps its permissions (and owner when
/// allowed). Parent directories are created. Returns what `fill` returns.
pub(crate) fn atomic_write(
    b: &Beneath,
    target: &Path,
    new_mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> Result<u64, Error>,
) -> Result<u64, Error> {
    if let Some(parent) = b.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        b.dir
            .create_dir_all(parent)
            .map_err(|e| io_failed("create directory", target.parent().unwrap_or(target), &e))?;
    }
    let (dir, name) = parent_of(b, target)?;
    let existing = match dir.symlink_metadata(&name) {
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
    let mut file = None;
    let tmp = make_temp(&dir, &name, |n| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true).mode(new_mode);
        file = Some(dir.open_with(n, &o)?.into_std());
        Ok(())
    })
    .map_err(|e| {
        io_failed(
            "create a temporary file in",
            target.parent().unwrap_or(target),
            &e,
        )
    })?;
    let mut file = file.expect("set when the temporary entry was made");
    let n = fill(&mut file)?;
    let failed = |e: io::Error| io_failed("write", target, &e);
    if let Some(md) = existing {
        let now = file.metadata().map_err(failed)?;
        if (md.uid(), md.gid()) != (now.uid(), now.gid()) {
            let _ = std::os::unix::fs::fchown(&file, Some(md.uid()), Some(md.gid()));
        }
        file.set_permissions(std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(failed)?;
    }
    file.sync_all().map_err(failed)?;
    drop(file);
    let mut tmp = tmp;
    dir.rename(&tmp.name, &dir, &name)
        .map_err(|e| io_failed("replace", target, &e))?;
    tmp.armed = false;
    let _ = fsync(&dir);
    Ok(n)
}

/// Files are written whole; a directory in the way is an error, reported
/// before anything is recorded.
fn refuse_dir(b: &Beneath, p: &Path) -> Result<(), Error> {
    if b.dir.symlink_metadata(b.path()).is_ok_and(|m| m.is_dir()) {
        return Err(Error::failed(format!(
            "cannot write {}: Is a directory",
            p.display()
        )));
    }
    Ok(())
}

pub fn write_file(env: &PluginEnv, path: &str, contents: &[u8]) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    let b = beneath(env, Capability::Write, &p)?;
    refuse_dir(&b, &p)?;
    if !env.side_effect(format!("write {} bytes to {}", contents.len(), p.display()))? {
        return Ok(());
    }
    atomic_write(&b, &p, 0o666, |f| {
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
    let sb = beneath(env, Capability::Read, &src)?;
    let mut file = sb
        .dir
        .open(sb.path())
        .map_err(|e| io_failed("read", &src, &e))?
        .into_std();
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
    let db = beneath(env, Capability::Write, &dst)?;
    refuse_dir(&db, &dst)?;
    if !env.side_effect(format!(
        "copy {} to {} ({} bytes)",
        src.display(),
        dst.display(),
        md.len()
    ))? {
        return Ok(md.len());
    }
    atomic_write(&db, &dst, md.mode() & 0o7777, |f| {
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
    let sb = beneath(env, Capability::Write, &src)?;
    let db = beneath(env, Capability::Write, &dst)?;
    let (sdir, sname) = parent_of(&sb, &src)?;
    if let Err(e) = sdir.symlink_metadata(&sname) {
        return Err(io_failed("rename", &src, &e));
    }
    if !env.side_effect(format!("rename {} to {}", src.display(), dst.display()))? {
        return Ok(());
    }
    let (ddir, dname) = parent_of(&db, &dst)?;
    sdir.rename(&sname, &ddir, &dname).map_err(|e| {
        Error::failed(format!(
            "cannot rename {} to {}: {}",
            src.display(),
            dst.display(),
            super::os_message(&e)
        ))
    })?;
    let _ = fsync(&sdir);
    let _ = fsync(&ddir);
    Ok(())
}

/// Remove a file, a symbolic link (not what it points to) or a directory
/// with everything in it.
pub fn remove(env: &PluginEnv, path: &str) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    let b = beneath(env, Capability::Write, &p)?;
    let (dir, name) = parent_of(&b, &p)?;
    let md = dir
        .symlink_metadata(&name)
        .map_err(|e| io_failed("remove", &p, &e))?;
    let what = if md.is_dir() { "directory " } else { "" };
    if !env.side_effect(format!("remove {what}{}", p.display()))? {
        return Ok(());
    }
    let r = if md.is_dir() {
        dir.remove_dir_all(&name)
    } else {
        dir.remove_file(&name)
    };
    r.map_err(|e| io_failed("remove", &p, &e))?;
    let _ = fsync(&dir);
    Ok(())
}

pub fn make_dir(env: &PluginEnv, path: &str) -> Result<(), Error> {
    let p = env.sandbox.check_write(path)?;
    let b = beneath(env, Capability::Write, &p)?;
    if b.dir.is_dir(b.path()) {
        return Ok(());
    }
    if !env.side_effect(format!("create directory {}", p.display()))? {
        return Ok(());
    }
    b.dir
        .create_dir_all(b.path())
        .map_err(|e| io_failed("create directory", &p, &e))
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
        modified_ms: md.modified().map(|t| millis(t.into_std())).unwrap_or(0),
    }
}

/// Entries under a directory, sorted by path. Symbolic links are listed as
/// links and never followed.
pub fn list_dir(env: &PluginEnv, path: &str, recursive: bool) -> Result<Vec<DirEntry>, Error> {
    let p = env.sandbox.check_read(path)?;
    let b = beneath(env, Capability::Read, &p)?;
    let md = b
        .dir
        .metadata(b.path())
        .map_err(|e| io_failed("list", &p, &e))?;
    if !md.is_dir() {
        return Err(Error::failed(format!(
            "cannot list {}: Not a directory",
            p.display()
        )));
    }
    let top = b
        .dir
        .open_dir(b.path())
        .map_err(|e| io_failed("list", &p, &e))?;
    let mut out = Vec::new();
    let mut pending = vec![(top, p.clone())];
    while let Some((dir, dir_path)) = pending.pop() {
        let rd = dir
            .entries()
            .map_err(|e| io_failed("list", &dir_path, &e))?;
        for e in rd {
            let e = e.map_err(|e| io_failed("list", &dir_path, &e))?;
            let name = e.file_name();
            let child = dir_path.join(&name);
            let md = match dir.symlink_metadata(&name) {
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
                let sub = dir
                    .open_dir(&name)
                    .map_err(|e| io_failed("list", &child, &e))?;
                pending.push((sub, child.clone()));
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
    let b = beneath(env, Capability::Read, &p)?;
    let md = match parent_of(&b, &p) {
        Ok((dir, name)) => dir.symlink_metadata(&name),
        Err(_) => b.dir.symlink_metadata(b.path()),
    };
    match md {
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
    let Some(dir) = l.parent() else {
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
    let b = beneath(env, Capability::Write, &l)?;
    if b.dir.symlink_metadata(b.path()).is_ok_and(|m| m.is_dir()) {
        return Err(Error::failed(format!(
            "cannot make {} a symbolic link: it is a directory",
            l.display()
        )));
    }
    if !env.side_effect(format!("point {} at {target}", l.display()))? {
        return Ok(());
    }
    if let Some(parent) = b.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        b.dir
            .create_dir_all(parent)
            .map_err(|e| io_failed("create directory", dir, &e))?;
    }
    let (pdir, name) = parent_of(&b, &l)?;
    // The target is stored as written (it is only text until followed, and
    // following it is checked like any other path).
    let mut tmp = make_temp(&pdir, &name, |n| pdir.symlink_contents(target, n))
        .map_err(|e| io_failed("create a symbolic link in", dir, &e))?;
    pdir.rename(&tmp.name, &pdir, &name)
        .map_err(|e| io_failed("replace", &l, &e))?;
    tmp.armed = false;
    let _ = fsync(&pdir);
    Ok(())
}

pub fn read_link(env: &PluginEnv, path: &str) -> Result<String, Error> {
    let p = check_read_entry(env, path)?;
    let b = beneath(env, Capability::Read, &p)?;
    let (dir, name) = parent_of(&b, &p)?;
    let target = dir
        .read_link_contents(&name)
        .map_err(|e| io_failed("read link", &p, &e))?;
    Ok(utf8(&target)?.to_string())
}
