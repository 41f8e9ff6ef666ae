//! Snapshots of granted paths.
//!
//! On disk, in `StateDir::snapshots(plugin)`:
//!
//! - `<id>.tar.zst`: a tar archive (GNU headers), zstd-compressed with a
//!   frame checksum. Entry names are the absolute paths without the leading
//!   `/`, so several roots fit in one archive. Directories, regular files
//!   and symbolic links (stored as links, never followed) keep their mode,
//!   mtime, uid and gid.
//! - `<id>.json`: the [`Manifest`]: the roots, which of them did not exist,
//!   every directory, file (size, SHA-256, mode) and link (target), and the
//!   SHA-256 of the compressed archive.
//!
//! Both are written to temporary files in the same directory, fsynced and
//! renamed into place, archive first: a manifest only ever names a complete
//! archive, and a snapshot without a manifest does not exist.
//!
//! `restore` verifies the whole archive first, extracts every root into a
//! temporary directory next to it (`<parent>/.rewind-restore-XXXXXX/new`,
//! same file system), then swaps each root in: the current one is renamed
//! to `.../old`, the extracted one into place. A failed swap undoes the
//! swaps already made, so a failed restore leaves the old files in place.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::Dir;
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{fsync_dir, io_failed, millis, utf8};
use crate::bindings::storage::{RestoreReport, SnapshotInfo};
use crate::bindings::types::Error;
use crate::sandbox::{Capability, open_dir_file};
use crate::state::PluginEnv;

/// Version of the manifest format.
pub const FORMAT: u32 = 1;
/// The id reported by `snapshot` in dry runs, where nothing is written.
pub const DRY_RUN_ID: &str = "dry-run";
const ZSTD_LEVEL: i32 = 3;

/// The JSON manifest stored next to each archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub plugin: String,
    pub label: String,
    /// The run that took it (empty for snapshots taken outside a run, and
    /// for manifests written before runs were recorded).
    #[serde(default)]
    pub run: String,
    pub created_ms: u64,
    /// Nanoseconds since the epoch, to order snapshots taken in the same ms.
    #[serde(default)]
    pub created_ns: u64,
    /// The roots, canonical absolute paths, sorted.
    pub paths: Vec<String>,
    /// Roots that did not exist when the snapshot was taken: restoring
    /// removes them.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Regular files.
    pub files: Vec<FileRecord>,
    #[serde(default)]
    pub dirs: Vec<DirRecord>,
    #[serde(default)]
    pub symlinks: Vec<LinkRecord>,
    /// Total size of the files, uncompressed.
    pub bytes: u64,
    /// SHA-256 (hex) of the compressed archive.
    pub archive_sha256: String,
    /// Size of the compressed archive.
    pub archive_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRecord {
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub path: String,
    pub target: String,
}

impl Manifest {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            label: self.label.clone(),
            created_ms: self.created_ms,
            paths: self.paths.clone(),
            files: u32::try_from(self.files.len()).unwrap_or(u32::MAX),
            bytes: self.bytes,
            sha256: self.archive_sha256.clone(),
        }
    }

    fn newest_first(a: &Manifest, b: &Manifest) -> std::cmp::Ordering {
        (b.created_ms, b.created_ns, &b.id).cmp(&(a.created_ms, a.created_ns, &a.id))
    }
}

pub fn archive_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.tar.zst"))
}

pub fn manifest_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Snapshot ids come from plugins: only `[A-Za-z0-9._-]`, no `..`, no
/// leading dot.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("bad snapshot id {id:?}")))
    }
}

/// The label as it appears in ids: `[A-Za-z0-9._-]`, at most 48 characters.
pub fn sanitize_label(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        if c == '.' && out.ends_with('.') {
            continue;
        }
        out.push(c);
        if out.len() >= 48 {
            break;
        }
    }
    let out = out.trim_matches(['.', '-']);
    if out.is_empty() {
        "snapshot".to_string()
    } else {
        out.to_string()
    }
}

/// `YYYYmmddTHHMMSSmmmZ` in UTC.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | '.'))
        .collect()
}

fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// Entry name in the archive: the absolute path without the leading `/`.
fn entry_name(path: &Path) -> Result<&str, Error> {
    Ok(utf8(path)?.trim_start_matches('/'))
}

/// The absolute path of an archive entry. Only plain components are
/// accepted, whatever the archive holds.
fn entry_abs(name: &Path) -> Option<String> {
    let mut out = String::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => {
                out.push('/');
                out.push_str(n.to_str()?);
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `child` is `root` or under it (as strings of canonical paths).
fn under(child: &str, root: &str) -> bool {
    child == root || (child.starts_with(root) && child.as_bytes().get(root.len()) == Some(&b'/'))
}

fn state_root(env: &PluginEnv) -> PathBuf {
    fs::canonicalize(&env.state.root).unwrap_or_else(|_| env.state.root.clone())
}

/// Roots must be absolute, not `/`, not overlap, and keep clear of the state
/// directory (restoring over it would replace the journals and snapshots).
fn validate_roots(env: &PluginEnv, roots: &[PathBuf]) -> Result<(), Error> {
    let state = state_root(env);
    for (i, r) in roots.iter().enumerate() {
        let s = utf8(r)?;
        if !r.is_absolute() || r.parent().is_none() {
            return Err(Error::invalid(format!(
                "cannot snapshot {s}: a snapshot path must be below /"
            )));
        }
        if state.starts_with(r) {
            return Err(Error::invalid(format!(
                "cannot snapshot {s}: it holds rewind's state directory {}",
                state.display()
            )));
        }
        if r.starts_with(&state) {
            return Err(Error::invalid(format!(
                "cannot snapshot {s}: it is inside rewind's state directory {}",
                state.display()
            )));
        }
        for o in &roots[i + 1..] {
            if o.starts_with(r) || r.starts_with(o) {
                return Err(Error::invalid(format!(
                    "snapshot paths {s} and {} overlap; give only the outer one",
                    o.display()
                )));
            }
        }
    }
    Ok(())
}

/// A writer that hashes and counts what goes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what goes through it.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads exactly `size` bytes of a file being archived, hashing them; a file
/// that shrinks meanwhile is an error (the tar header already has the size).
struct FileReader<'a> {
    file: File,
    path: &'a Path,
    size: u64,
    hasher: Sha256,
    n: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size - self.n;
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "{} shrank while it was being archived",
                self.path.display()
            )));
        }
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

type ArchiveWriter =
    tar::Builder<zstd::Encoder<'static, HashWriter<BufWriter<tempfile::NamedTempFile>>>>;

struct Archiver<'a> {
    env: &'a PluginEnv,
    tar: ArchiveWriter,
    manifest: Manifest,
    /// When the snapshot must be done by (`[limits] snapshot_time`).
    deadline: std::time::Instant,
}

impl Archiver<'_> {
    /// Refuse to go on past `[limits] snapshot_bytes` (counting the next
    /// file) or `snapshot_time`: the archive so far is dropped with its
    /// temporary file, and the error says which limit and where.
    fn within_limits(&self, path: &Path, next_bytes: u64) -> Result<(), Error> {
        let l = &self.env.limits;
        let total = self.manifest.bytes.saturating_add(next_bytes);
        if total > l.snapshot_bytes {
            return Err(Error::invalid(format!(
                "snapshot of {} would hold more than the [limits] snapshot_bytes of {} (at {}); snapshot fewer paths or raise the limit",
                self.manifest.paths.join(", "),
                crate::runtime::show_bytes(usize::try_from(l.snapshot_bytes).unwrap_or(usize::MAX)),
                path.display()
            )));
        }
        if std::time::Instant::now() >= self.deadline {
            return Err(Error::timeout(format!(
                "snapshot of {} took longer than the [limits] snapshot_time of {} s (at {}); snapshot fewer paths or raise the limit",
                self.manifest.paths.join(", "),
                l.snapshot_time.as_secs(),
                path.display()
            )));
        }
        Ok(())
    }
}

/// What a tar header keeps of an entry's metadata.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl From<&Metadata> for Attrs {
    fn from(md: &Metadata) -> Self {
        Self {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
        }
    }
}

impl From<&cap_std::fs::Metadata> for Attrs {
    fn from(md: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt as _;
        Self {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
        }
    }
}

fn header(kind: tar::EntryType, md: &Attrs, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode & 0o7777);
    h.set_uid(u64::from(md.uid));
    h.set_gid(u64::from(md.gid));
    h.set_mtime(u64::try_from(md.mtime).unwrap_or(0));
    h.set_size(size);
    h
}

/// Open `name` in `dir` with `flags`, never following a symbolic link there
/// (the entry was a file or directory when listed; a link swapped in since
/// is refused, not followed).
fn open_nofollow_in(dir: &Dir, name: &OsStr, flags: OFlag) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// The names in a directory opened by handle, sorted.
fn sorted_names(dir: &Dir) -> io::Result<Vec<OsString>> {
    let mut names = dir
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// The directory holding a snapshot root, opened beneath the grant that
/// holds the root, and the root's name in it.
fn root_parent(env: &PluginEnv, root: &Path) -> Result<(Dir, OsString), Error> {
    env.sandbox
        .beneath(Capability::Read, root)
        .and_then(|b| b.parent())
        .map_err(|e| io_failed("open the directory of", root, &e))?
        .ok_or_else(|| Error::invalid(format!("cannot snapshot {}", root.display())))
}

impl Archiver<'_> {
    /// Archive the entry `name` of `parent` (a handle beneath the grant),
    /// which is at `path`, and everything under it. Nothing is reached by
    /// path: each directory is opened from its parent's handle without
    /// following a link, so a link swapped in during the walk is not
    /// followed out of the grant.
    fn add(&mut self, parent: &Dir, name: &OsStr, path: &Path) -> Result<(), Error> {
        let entry = entry_name(path)?;
        let shown = path.display();
        let failed = |e: io::Error| {
            Error::failed(format!("cannot archive {shown}: {}", super::os_message(&e)))
        };
        let md = parent
            .symlink_metadata(name)
            .map_err(|e| io_failed("read", path, &e))?;
        let ft = md.file_type();
        self.within_limits(path, if ft.is_file() { md.len() } else { 0 })?;
        if ft.is_dir() {
            let d = open_nofollow_in(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| io_failed("read directory", path, &e))?;
            let dmd = d.metadata().map_err(|e| io_failed("read", path, &e))?;
            let attrs = Attrs::from(&dmd);
            let mut h = header(tar::EntryType::Directory, &attrs, 0);
            self.tar
                .append_data(&mut h, entry, io::empty())
                .map_err(failed)?;
            self.manifest.dirs.push(DirRecord {
                path: path.to_str().unwrap_or_default().to_string(),
                mode: attrs.mode & 0o7777,
            });
            let dir = Dir::from_std_file(d);
            let children = sorted_names(&dir).map_err(|e| io_failed("read directory", path, &e))?;
            for child in children {
                self.add(&dir, &child, &path.join(&child))?;
            }
        } else if ft.is_file() {
            let file = open_nofollow_in(parent, name, OFlag::O_RDONLY)
                .map_err(|e| io_failed("read", path, &e))?;
            let md = file.metadata().map_err(|e| io_failed("read", path, &e))?;
            let size = md.len();
            // Again on the open file: it may have grown since the lookup.
            self.within_limits(path, size)?;
            let mut h = header(tar::EntryType::Regular, &Attrs::from(&md), size);
            let mut r = FileReader {
                file,
                path,
                size,
                hasher: Sha256::new(),
                n: 0,
            };
            self.tar
                .append_data(&mut h, entry, &mut r)
                .map_err(failed)?;
            self.manifest.files.push(FileRecord {
                path: path.to_str().unwrap_or_default().to_string(),
                size,
                sha256: hex::encode(r.hasher.finalize()),
                mode: md.mode() & 0o7777,
            });
            self.manifest.bytes += size;
        } else if ft.is_symlink() {
            let target = parent
                .read_link_contents(name)
                .map_err(|e| io_failed("read link", path, &e))?;
            let target_str = utf8(&target)?.to_string();
            let mut h = header(tar::EntryType::Symlink, &Attrs::from(&md), 0);
            self.tar
                .append_link(&mut h, entry, &target)
                .map_err(failed)?;
            self.manifest.symlinks.push(LinkRecord {
                path: path.to_str().unwrap_or_default().to_string(),
                target: target_str,
            });
        } else {
            self.env.log(
                "warn",
                &format!("snapshot: skipping {shown}: not a file, directory or symbolic link"),
            );
        }
        Ok(())
    }
}

/// Files and bytes a snapshot of `roots` would hold (for dry runs), walked
/// by handle like the snapshot itself.
fn count(env: &PluginEnv, roots: &[PathBuf]) -> Result<(u32, u64), Error> {
    fn walk(
        parent: &Dir,
        name: &OsStr,
        path: &Path,
        files: &mut u32,
        bytes: &mut u64,
    ) -> Result<(), Error> {
        let md = parent
            .symlink_metadata(name)
            .map_err(|e| io_failed("read", path, &e))?;
        if md.is_dir() {
            let d = open_nofollow_in(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| io_failed("read directory", path, &e))?;
            let dir = Dir::from_std_file(d);
            for child in sorted_names(&dir).map_err(|e| io_failed("read directory", path, &e))? {
                walk(&dir, &child, &path.join(&child), files, bytes)?;
            }
        } else if md.is_file() {
            *files = files.saturating_add(1);
            *bytes += md.len();
        }
        Ok(())
    }
    let (mut files, mut bytes) = (0, 0);
    for r in roots {
        let (parent, name) = root_parent(env, r)?;
        match parent.symlink_metadata(&name) {
            Ok(_) => walk(&parent, &name, r, &mut files, &mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failed("read", r, &e)),
        }
    }
    Ok((files, bytes))
}

pub fn snapshot(env: &PluginEnv, label: &str, paths: &[String]) -> Result<SnapshotInfo, Error> {
    if paths.is_empty() {
        return Err(Error::invalid("a snapshot needs at least one path"));
    }
    let mut roots = Vec::new();
    for p in paths {
        let r = env.sandbox.check_read_entry(p)?;
        if !roots.contains(&r) {
            roots.push(r);
        }
    }
    roots.sort();
    validate_roots(env, &roots)?;
    let root_strs: Vec<String> = roots
        .iter()
        .map(|r| utf8(r).map(str::to_string))
        .collect::<Result<_, _>>()?;
    let now = SystemTime::now();
    if !env.side_effect(format!(
        "snapshot {} (label {label:?})",
        root_strs.join(", ")
    ))? {
        let (files, bytes) = count(env, &roots)?;
        return Ok(SnapshotInfo {
            id: DRY_RUN_ID.to_string(),
            label: label.to_string(),
            created_ms: millis(now),
            paths: root_strs,
            files,
            bytes,
            sha256: String::new(),
        });
    }

    let dir = env.storage.snapshots_dir.clone();
    crate::state::create_private_dir(&dir)
        .map_err(|e| io_failed("create snapshot directory", &dir, &e))?;
    let write_failed = |e: io::Error| io_failed("write snapshot archive in", &dir, &e);
    // A snapshot killed mid-write (rewind killed, the machine down) leaves
    // its temporary archive: snapshots of one plugin never run at once (the
    // run lock), so any found now is such a leftover.
    remove_leftover_temps(&dir);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".tar.zst")
        .tempfile_in(&dir)
        .map_err(write_failed)?;
    let hw = HashWriter {
        inner: BufWriter::new(tmp),
        hasher: Sha256::new(),
        n: 0,
    };
    let mut enc = zstd::Encoder::new(hw, ZSTD_LEVEL).map_err(write_failed)?;
    enc.include_checksum(true).map_err(write_failed)?;
    let mut ar = Archiver {
        env,
        tar: tar::Builder::new(enc),
        manifest: Manifest {
            format: FORMAT,
            id: String::new(),
            plugin: env.storage.plugin.clone(),
            label: label.to_string(),
            run: env
                .journal
                .as_ref()
                .map(|j| j.run_id().to_string())
                .unwrap_or_default(),
            created_ms: millis(now),
            created_ns: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            paths: root_strs.clone(),
            absent: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            bytes: 0,
            archive_sha256: String::new(),
            archive_bytes: 0,
        },
        deadline: std::time::Instant::now() + env.limits.snapshot_time,
    };
    for (root, s) in roots.iter().zip(&root_strs) {
        let (parent, name) = root_parent(env, root)?;
        match parent.symlink_metadata(&name) {
            Ok(_) => ar.add(&parent, &name, root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => ar.manifest.absent.push(s.clone()),
            Err(e) => return Err(io_failed("read", root, &e)),
        }
    }
    let Archiver {
        tar, mut manifest, ..
    } = ar;
    let hw = tar
        .into_inner()
        .and_then(|enc| enc.finish())
        .map_err(write_failed)?;
    manifest.archive_sha256 = hex::encode(hw.hasher.finalize());
    manifest.archive_bytes = hw.n;
    let mut tmp = hw
        .inner
        .into_inner()
        .map_err(|e| write_failed(e.into_error()))?;
    tmp.as_file().sync_all().map_err(write_failed)?;

    // Pick the id: the first that names neither an archive nor a manifest.
    let base = format!("{}-{}", sanitize_label(label), timestamp(now));
    let mut id = None;
    for _ in 0..64 {
        let candidate = format!("{base}-{:04x}", random_u16());
        if manifest_path(&dir, &candidate).exists() {
            continue;
        }
        match tmp.persist_noclobber(archive_path(&dir, &candidate)) {
            Ok(_) => {
                id = Some(candidate);
                break;
            }
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => return Err(write_failed(e.error)),
        }
    }
    let id = id.ok_or_else(|| {
        Error::failed(format!(
            "cannot find a free snapshot id {base}-XXXX in {}",
            dir.display()
        ))
    })?;
    manifest.id = id.clone();
    if let Err(e) = write_manifest(&dir, &manifest) {
        let _ = fs::remove_file(archive_path(&dir, &id));
        return Err(e);
    }
    let _ = fsync_dir(&dir);
    Ok(manifest.info())
}

/// Remove `.tmp-*` files (unfinished archives and manifests) from a
/// plugin's snapshot directory.
fn remove_leftover_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(".tmp-") && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), Error> {
    let target = manifest_path(dir, &m.id);
    let failed = |e: io::Error| io_failed("write snapshot manifest", &target, &e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".json")
        .tempfile_in(dir)
        .map_err(failed)?;
    serde_json::to_writer_pretty(&mut tmp, m).map_err(|e| failed(e.into()))?;
    tmp.write_all(b"\n").map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist_noclobber(&target)
        .map_err(|e| failed(e.error))?;
    Ok(())
}

/// Read and check a manifest of this plugin's snapshots.
pub fn load_manifest(dir: &Path, id: &str) -> Result<Manifest, Error> {
    validate_id(id)?;
    let path = manifest_path(dir, id);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::failed(format!(
                "snapshot {id} not found in {}",
                dir.display()
            )));
        }
        Err(e) => return Err(io_failed("read snapshot manifest", &path, &e)),
    };
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| {
        Error::failed(format!(
            "snapshot {id}: manifest {} is not valid: {e}",
            path.display()
        ))
    })?;
    let bad = |why: String| {
        Err(Error::failed(format!(
            "snapshot {id}: manifest {}: {why}",
            path.display()
        )))
    };
    if m.format != FORMAT {
        return bad(format!(
            "format {} is not supported (expected {FORMAT})",
            m.format
        ));
    }
    if m.id != id {
        return bad(format!("it is for snapshot {:?}", m.id));
    }
    for p in &m.paths {
        if entry_abs(Path::new(p.trim_start_matches('/'))).as_deref() != Some(p.as_str()) {
            return bad(format!("path {p:?} is not a plain absolute path"));
        }
    }
    let entries = m
        .files
        .iter()
        .map(|f| &f.path)
        .chain(m.dirs.iter().map(|d| &d.path));
    for p in entries.chain(m.symlinks.iter().map(|l| &l.path)) {
        if !m.paths.iter().any(|r| under(p, r)) || m.absent.iter().any(|r| under(p, r)) {
            return bad(format!("entry {p} is not under one of its paths"));
        }
    }
    Ok(m)
}

/// All manifests in a snapshot directory, newest first. Unreadable ones
/// are skipped with a warning.
pub fn list_manifests(dir: &Path) -> Result<Vec<Manifest>, Error> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_failed("read snapshot directory", dir, &e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_failed("read snapshot directory", dir, &e))?;
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if id.starts_with('.') {
            continue;
        }
        match load_manifest(dir, id) {
            Ok(m) => out.push(m),
            Err(err) => tracing::warn!("skipping snapshot manifest {}: {err}", e.path().display()),
        }
    }
    out.sort_by(Manifest::newest_first);
    Ok(out)
}

/// Where `check_archive` puts what it extracts: for each root (by index in
/// `Manifest::paths`), the temporary directory to create it in (a handle,
/// and its path for messages), if it is being restored. Everything is
/// created through the handle, beneath it.
struct Extract {
    roots: Vec<(String, Option<(Dir, PathBuf)>)>,
    /// Directories created (root index, path under the temporary
    /// directory, mode, mtime), to give them their mode and mtime once
    /// their contents are in place.
    dirs: Vec<(usize, PathBuf, u32, u64)>,
}

/// Where one archive entry goes: the root's index, the path under its
/// temporary directory, and the full path (for messages).
struct Dest {
    root: usize,
    rel: PathBuf,
    shown: PathBuf,
}

impl Extract {
    fn dest(&self, abs: &str) -> Option<Dest> {
        let (i, (root, dest)) = self
            .roots
            .iter()
            .enumerate()
            .find(|(_, (r, _))| under(abs, r))?;
        let (_, tmp_path) = dest.as_ref()?;
        let rel = abs[root.len()..].trim_start_matches('/');
        let rel = if rel.is_empty() {
            PathBuf::from("new")
        } else {
            Path::new("new").join(rel)
        };
        Some(Dest {
            root: i,
            shown: tmp_path.join(&rel),
            rel,
        })
    }

    fn dir(&self, d: &Dest) -> &Dir {
        &self.roots[d.root]
            .1
            .as_ref()
            .expect("a destination is only given for a staged root")
            .0
    }

    fn finish(&mut self) -> io::Result<()> {
        // Deepest first, so a read-only directory is closed after its contents.
        for (root, rel, mode, mtime) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let Some((tmp, _)) = &self.roots[root].1 else {
                continue;
            };
            let d = open_dir_file(tmp, &rel)?;
            d.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
            d.sync_all()?;
            d.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

/// The owner recorded in a tar header, when it fits.
fn owner(hdr: &tar::Header) -> Option<(u32, u32)> {
    let uid = u32::try_from(hdr.uid().ok()?).ok()?;
    let gid = u32::try_from(hdr.gid().ok()?).ok()?;
    Some((uid, gid))
}

/// Ownership is restored when allowed (as root, or to the user's own ids),
/// on an open file or directory.
fn chown_open(f: &File, hdr: &tar::Header) {
    if let Some((uid, gid)) = owner(hdr)
        && let Ok(md) = f.metadata()
        && (md.uid() != uid || md.gid() != gid)
    {
        let _ = std::os::unix::fs::fchown(f, Some(uid), Some(gid));
    }
}

/// Check the archive against the manifest: the compressed file's SHA-256,
/// then every entry (kind, size, SHA-256, mode, link target), and that
/// nothing is missing or extra. With `extract`, entries are also written
/// out; the caller discards them if this fails.
fn check_archive(
    m: &Manifest,
    path: &Path,
    mut extract: Option<&mut Extract>,
) -> Result<(), Error> {
    let id = &m.id;
    let shown = path.display();
    let open = || match File::open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::failed(format!(
            "snapshot {id}: archive {shown} is missing"
        ))),
        Err(e) => Err(io_failed("read snapshot archive", path, &e)),
    };
    let mismatch = |found: &str| {
        Error::failed(format!(
            "snapshot {id}: archive {shown} sha256 mismatch (manifest {}, archive {found})",
            m.archive_sha256
        ))
    };
    let corrupt = |e: io::Error| {
        Error::failed(format!(
            "snapshot {id}: archive {shown} is corrupt: {}",
            super::os_message(&e)
        ))
    };

    // The whole compressed file first: cheap, and catches most damage
    // before anything is decompressed. (When extracting, the caller has
    // verified already; the stream is hashed again below in any case.)
    if extract.is_none() {
        let mut r = HashReader {
            inner: open()?,
            hasher: Sha256::new(),
            n: 0,
        };
        io::copy(&mut r, &mut io::sink())
            .map_err(|e| io_failed("read snapshot archive", path, &e))?;
        let sha = hex::encode(r.hasher.finalize());
        if sha != m.archive_sha256 {
            return Err(mismatch(&sha));
        }
    }

    // Then every entry, hashing the compressed stream again as it is read
    // (the file could change between the two passes).
    let files: HashMap<&str, &FileRecord> = m.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let dirs: HashMap<&str, &DirRecord> = m.dirs.iter().map(|d| (d.path.as_str(), d)).collect();
    let links: HashMap<&str, &LinkRecord> =
        m.symlinks.iter().map(|l| (l.path.as_str(), l)).collect();
    let mut seen = HashSet::new();
    let reader = HashReader {
        inner: open()?,
        hasher: Sha256::new(),
        n: 0,
    };
    let mut archive = tar::Archive::new(zstd::Decoder::new(reader).map_err(corrupt)?);
    let fail = |what: String| Error::failed(format!("snapshot {id}: {what}"));
    let mut buf = vec![0u8; 64 * 1024];
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path().map_err(corrupt)?.into_owned();
        let Some(abs) = entry_abs(&name) else {
            return Err(fail(format!(
                "archive entry {:?} is not a plain relative path",
                name.display()
            )));
        };
        if !seen.insert(abs.clone()) {
            return Err(fail(format!("archive holds {abs} twice")));
        }
        let hdr = entry.header().clone();
        let mode = hdr.mode().map_err(corrupt)? & 0o7777;
        let mtime = hdr.mtime().unwrap_or(0);
        let dest = match extract.as_deref() {
            Some(x) => Some(x.dest(&abs).ok_or_else(|| {
                fail(format!(
                    "archive entry {abs} is under none of the paths to restore"
                ))
            })?),
            None => None,
        };
        let out_failed = |p: &Path, e: io::Error| io_failed("restore", p, &e);
        match hdr.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let Some(rec) = files.get(abs.as_str()) else {
                    return Err(fail(format!("unexpected file {abs} in archive")));
                };
                if entry.size() != rec.size {
                    return Err(fail(format!(
                        "file {abs} size mismatch (manifest {}, archive {})",
                        rec.size,
                        entry.size()
                    )));
                }
                let mut out = match (&dest, extract.as_deref()) {
                    (Some(d), Some(x)) => {
                        let mut o = cap_std::fs::OpenOptions::new();
                        cap_std::fs::OpenOptionsExt::mode(o.write(true).create_new(true), 0o600);
                        Some(
                            x.dir(d)
                                .open_with(&d.rel, &o)
                                .map_err(|e| out_failed(&d.shown, e))?
                                .into_std(),
                        )
                    }
                    _ => None,
                };
                let mut hasher = Sha256::new();
                loop {
                    let n = entry.read(&mut buf).map_err(corrupt)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    if let (Some(f), Some(d)) = (&mut out, &dest) {
                        f.write_all(&buf[..n])
                            .map_err(|e| out_failed(&d.shown, e))?;
                    }
                }
                let sha = hex::encode(hasher.finalize());
                if sha != rec.sha256 {
                    return Err(fail(format!(
                        "file {abs} sha256 mismatch (manifest {}, archive {sha})",
                        rec.sha256
                    )));
                }
                if mode != rec.mode {
                    return Err(fail(format!(
                        "file {abs} mode mismatch (manifest {:o}, archive {mode:o})",
                        rec.mode
                    )));
                }
                if let (Some(f), Some(d)) = (out, &dest) {
                    chown_open(&f, &hdr);
                    let done = f
                        .set_permissions(fs::Permissions::from_mode(mode))
                        .and_then(|()| f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime)))
                        .and_then(|()| f.sync_all());
                    done.map_err(|e| out_failed(&d.shown, e))?;
                }
            }
            tar::EntryType::Directory => {
                let Some(rec) = dirs.get(abs.as_str()) else {
                    return Err(fail(format!("unexpected directory {abs} in archive")));
                };
                if mode != rec.mode {
                    return Err(fail(format!(
                        "directory {abs} mode mismatch (manifest {:o}, archive {mode:o})",
                        rec.mode
                    )));
                }
                if let (Some(x), Some(d)) = (extract.as_deref_mut(), &dest) {
                    let dir = x.dir(d);
                    dir.create_dir(&d.rel)
                        .map_err(|e| out_failed(&d.shown, e))?;
                    if let Ok(made) = open_dir_file(dir, &d.rel) {
                        chown_open(&made, &hdr);
                    }
                    x.dirs.push((d.root, d.rel.clone(), mode, mtime));
                }
            }
            tar::EntryType::Symlink => {
                let Some(rec) = links.get(abs.as_str()) else {
                    return Err(fail(format!("unexpected symbolic link {abs} in archive")));
                };
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.to_str() != Some(rec.target.as_str()) {
                    return Err(fail(format!(
                        "symbolic link {abs} target mismatch (manifest {:?}, archive {:?})",
                        rec.target,
                        target.display()
                    )));
                }
                if let (Some(d), Some(x)) = (&dest, extract.as_deref()) {
                    let dir = x.dir(d);
                    dir.symlink_contents(&target, &d.rel)
                        .map_err(|e| out_failed(&d.shown, e))?;
                    // The link itself, never what it points to (by path:
                    // ownership only, in the directory rewind just made).
                    if let Some((uid, gid)) = owner(&hdr) {
                        let _ = std::os::unix::fs::lchown(&d.shown, Some(uid), Some(gid));
                    }
                }
            }
            other => {
                return Err(fail(format!(
                    "archive entry {abs} has unexpected type {other:?}"
                )));
            }
        }
    }
    let all = m.files.iter().map(|f| ("file", &f.path));
    let all = all.chain(m.dirs.iter().map(|d| ("directory", &d.path)));
    let all = all.chain(m.symlinks.iter().map(|l| ("symbolic link", &l.path)));
    for (kind, p) in all {
        if !seen.contains(p.as_str()) {
            return Err(fail(format!("{kind} {p} missing from archive")));
        }
    }
    // Read to the end (zstd checks its frame checksum), then compare the
    // hash of everything read with the manifest once more.
    let mut dec = archive.into_inner();
    io::copy(&mut dec, &mut io::sink()).map_err(corrupt)?;
    let mut rest = dec.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    let sha = hex::encode(rest.into_inner().hasher.finalize());
    if sha != m.archive_sha256 {
        return Err(mismatch(&sha));
    }
    if let Some(x) = extract {
        x.finish().map_err(|e| {
            Error::failed(format!(
                "snapshot {id}: cannot finish restored directories: {e}"
            ))
        })?;
    }
    Ok(())
}

pub fn verify(env: &PluginEnv, id: &str) -> Result<SnapshotInfo, Error> {
    let dir = &env.storage.snapshots_dir;
    let m = load_manifest(dir, id)?;
    check_archive(&m, &archive_path(dir, id), None)?;
    Ok(m.info())
}

/// One root being restored: a temporary directory next to it holding the
/// extracted copy (`new`) and, once swapped, the previous one (`old`). The
/// directory holding the root is held by a handle opened beneath the
/// grant, and every rename goes through it and the temporary directory's
/// handle, by single names.
struct Stage {
    root: PathBuf,
    /// The directory holding the root, and the root's name in it.
    parent: Dir,
    name: OsString,
    /// The temporary directory, by name in `parent`, and its handle.
    tmp_name: String,
    tmp: Dir,
    /// Whether the snapshot holds this root (else restoring removes it).
    existed: bool,
    /// Whether something is at `root` now.
    present: bool,
    /// Remove the temporary directory when dropped: false once it holds a
    /// copy that could not be put back, or once it was removed.
    cleanup: bool,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if self.cleanup {
            let _ = remove_tree_in(&self.parent, OsStr::new(&self.tmp_name));
        }
    }
}

impl Stage {
    /// Create the temporary directory next to the root.
    fn new(
        root: PathBuf,
        parent: Dir,
        name: OsString,
        existed: bool,
        present: bool,
    ) -> io::Result<Self> {
        let mut builder = cap_std::fs::DirBuilder::new();
        cap_std::fs::DirBuilderExt::mode(&mut builder, 0o700);
        let mut last = None;
        for _ in 0..16 {
            let tmp_name = format!(".rewind-restore-{:04x}{:04x}", random_u16(), random_u16());
            match parent.create_dir_with(&tmp_name, &builder) {
                Ok(()) => {
                    let tmp = parent.open_dir(&tmp_name)?;
                    return Ok(Self {
                        root,
                        parent,
                        name,
                        tmp_name,
                        tmp,
                        existed,
                        present,
                        cleanup: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }
    fn tmp_path(&self) -> PathBuf {
        self.root
            .parent()
            .unwrap_or(Path::new("/"))
            .join(&self.tmp_name)
    }
    /// Put the restored copy in place, moving the current one aside. On
    /// failure the current one is put back.
    fn swap_in(&mut self) -> Result<(), String> {
        if self.present {
            self.parent
                .rename(&self.name, &self.tmp, "old")
                .map_err(|e| super::os_message(&e))?;
        }
        if self.existed
            && let Err(e) = self.tmp.rename("new", &self.parent, &self.name)
        {
            let mut msg = super::os_message(&e);
            if self.present
                && let Err(u) = self.tmp.rename("old", &self.parent, &self.name)
            {
                msg.push_str(&self.stranded(&u));
            }
            return Err(msg);
        }
        Ok(())
    }
    /// Undo a successful `swap_in`.
    fn swap_out(&mut self) -> Result<(), String> {
        if self.existed {
            self.parent
                .rename(&self.name, &self.tmp, "new")
                .map_err(|e| super::os_message(&e))?;
        }
        if self.present
            && let Err(u) = self.tmp.rename("old", &self.parent, &self.name)
        {
            return Err(self.stranded(&u));
        }
        Ok(())
    }
    /// The previous copy could not be put back: keep it, and say where.
    fn stranded(&mut self, e: &io::Error) -> String {
        self.cleanup = false;
        format!(
            "; could not put back the previous {} (it is kept in {}): {}",
            self.root.display(),
            self.tmp_path().join("old").display(),
            super::os_message(e)
        )
    }
}

pub fn restore(env: &PluginEnv, id: &str) -> Result<RestoreReport, Error> {
    let dir = &env.storage.snapshots_dir;
    let m = load_manifest(dir, id)?;
    let mut targets = Vec::new();
    for p in &m.paths {
        targets.push(env.sandbox.check_write(p)?);
    }
    validate_roots(env, &targets)?;
    let archive = archive_path(dir, id);
    check_archive(&m, &archive, None)?;
    let report = RestoreReport {
        id: id.to_string(),
        paths: m.paths.clone(),
        files: u32::try_from(m.files.len()).unwrap_or(u32::MAX),
    };
    if !env.side_effect(format!(
        "restore snapshot {id} ({} files, {} bytes) over {}",
        m.files.len(),
        m.bytes,
        m.paths.join(", ")
    ))? {
        return Ok(report);
    }

    // Stage every root next to where it goes, through the grant's handle.
    let mut stages: Vec<Option<Stage>> = Vec::new();
    for (p, target) in m.paths.iter().zip(&targets) {
        let existed = !m.absent.contains(p);
        let b = env
            .sandbox
            .beneath(Capability::Write, target)
            .map_err(|e| io_failed("open the grant holding", target, &e))?;
        let parent_rel = b.rel.parent().unwrap_or(Path::new(""));
        let present = match b.dir.symlink_metadata(b.path()) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_failed("read", target, &e)),
        };
        if !existed && !present {
            stages.push(None);
            continue;
        }
        let parent_path = target
            .parent()
            .ok_or_else(|| Error::invalid(format!("cannot restore {p}")))?;
        if !parent_rel.as_os_str().is_empty() {
            b.dir
                .create_dir_all(parent_rel)
                .map_err(|e| io_failed("create directory", parent_path, &e))?;
        }
        let (parent, name) = b
            .parent()
            .map_err(|e| io_failed("open directory", parent_path, &e))?
            .ok_or_else(|| Error::invalid(format!("cannot restore {p}")))?;
        let stage = Stage::new(target.clone(), parent, name, existed, present)
            .map_err(|e| io_failed("create a temporary directory in", parent_path, &e))?;
        stages.push(Some(stage));
    }
    let mut x = Extract {
        roots: m
            .paths
            .iter()
            .zip(&stages)
            .map(|(p, s)| {
                let dest = match s.as_ref().filter(|s| s.existed) {
                    Some(s) => Some((
                        s.tmp
                            .try_clone()
                            .map_err(|e| io_failed("open", &s.tmp_path(), &e))?,
                        s.tmp_path(),
                    )),
                    None => None,
                };
                Ok((p.clone(), dest))
            })
            .collect::<Result<_, Error>>()?,
        dirs: Vec::new(),
    };
    check_archive(&m, &archive, Some(&mut x))?;

    // Swap them in; on failure undo the swaps already made.
    let mut active: Vec<Stage> = stages.into_iter().flatten().collect();
    for i in 0..active.len() {
        let swapped = if injected_swap_failure(i) {
            Err("injected failure".to_string())
        } else {
            active[i].swap_in()
        };
        if let Err(e) = swapped {
            let mut msg = format!(
                "cannot restore {} from snapshot {id}: {e}",
                active[i].root.display()
            );
            for done in active[..i].iter_mut().rev() {
                if let Err(u) = done.swap_out() {
                    msg.push_str(&u);
                }
            }
            return Err(Error::failed(msg));
        }
    }
    for mut s in active {
        if let Ok(d) = open_dir_file(&s.parent, Path::new("")) {
            let _ = d.sync_all();
        }
        s.cleanup = false;
        if let Err(e) = remove_tree_in(&s.parent, OsStr::new(&s.tmp_name)) {
            env.log(
                "warn",
                &format!(
                    "restore: cannot remove the previous copy in {}: {e}",
                    s.tmp_path().display()
                ),
            );
        }
    }
    Ok(report)
}

/// Remove the directory tree `name` of `parent`, by handle, adding owner
/// write permission to directories that lack it (a restored or replaced
/// tree may hold read-only ones).
fn remove_tree_in(parent: &Dir, name: &OsStr) -> io::Result<()> {
    fn writable(dir: &Dir, name: &OsStr) {
        if let Ok(md) = dir.symlink_metadata(name)
            && md.is_dir()
            && let Ok(d) = open_nofollow_in(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        {
            use cap_std::fs::MetadataExt as _;
            let _ = d.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777 | 0o700));
            let sub = Dir::from_std_file(d);
            if let Ok(names) = sorted_names(&sub) {
                for n in names {
                    writable(&sub, &n);
                }
            }
        }
    }
    if parent.remove_dir_all(name).is_ok() {
        return Ok(());
    }
    writable(parent, name);
    parent.remove_dir_all(name)
}

#[cfg(test)]
thread_local! {
    /// Tests: make the swap of the root at this index fail.
    pub(super) static FAIL_SWAP_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn injected_swap_failure(i: usize) -> bool {
    FAIL_SWAP_AT.with(|f| f.get() == Some(i))
}

#[cfg(not(test))]
fn injected_swap_failure(_: usize) -> bool {
    false
}

pub fn list_snapshots(env: &PluginEnv, label_prefix: &str) -> Result<Vec<SnapshotInfo>, Error> {
    Ok(list_manifests(&env.storage.snapshots_dir)?
        .iter()
        .filter(|m| m.label.starts_with(label_prefix))
        .map(Manifest::info)
        .collect())
}

/// Delete all but the newest `keep` snapshots whose label starts with the
/// prefix; returns how many were (or, in dry runs, would be) deleted.
pub fn prune(env: &PluginEnv, label_prefix: &str, keep: u32) -> Result<u32, Error> {
    let dir = &env.storage.snapshots_dir;
    let victims: Vec<Manifest> = list_manifests(dir)?
        .into_iter()
        .filter(|m| m.label.starts_with(label_prefix))
        .skip(keep as usize)
        .collect();
    if victims.is_empty() {
        return Ok(0);
    }
    let n = u32::try_from(victims.len()).unwrap_or(u32::MAX);
    let ids: Vec<&str> = victims.iter().map(|m| m.id.as_str()).collect();
    if !env.side_effect(format!(
        "delete {n} snapshots labelled {label_prefix:?}*: {}",
        ids.join(", ")
    ))? {
        return Ok(n);
    }
    for id in ids {
        // Manifest first: a snapshot without one does not exist.
        for p in [manifest_path(dir, id), archive_path(dir, id)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_failed("delete", &p, &e)),
            }
        }
    }
    let _ = fsync_dir(dir);
    Ok(n)
}

/// What restoring a snapshot would change, path by path: shown before
/// `rewind restore` acts (and as all of `--dry-run`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Changes {
    /// In the snapshot and different now (content, mode, kind or link
    /// target): put back as they were.
    pub changed: Vec<String>,
    /// In the snapshot and gone now: recreated.
    pub missing: Vec<String>,
    /// Here now and not in the snapshot: removed by the restore.
    pub extra: Vec<String>,
    /// Entries that are already as the snapshot has them.
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Compare the live paths with a snapshot's manifest, reading only: each
/// root must be readable under the plugin's grants. Links are compared,
/// never followed.
pub fn compare(env: &PluginEnv, m: &Manifest) -> Result<Changes, Error> {
    enum Want<'a> {
        File(&'a FileRecord),
        Dir(u32),
        Link(&'a str),
    }
    let mut want: HashMap<&str, Want<'_>> = HashMap::new();
    for f in &m.files {
        want.insert(&f.path, Want::File(f));
    }
    for d in &m.dirs {
        want.insert(&d.path, Want::Dir(d.mode));
    }
    for l in &m.symlinks {
        want.insert(&l.path, Want::Link(&l.target));
    }
    let mut out = Changes::default();
    let mut seen: HashSet<String> = HashSet::new();
    fn same_file(path: &Path, f: &FileRecord, md: &Metadata) -> io::Result<bool> {
        if md.len() != f.size || md.mode() & 0o7777 != f.mode {
            return Ok(false);
        }
        let mut h = Sha256::new();
        io::copy(&mut File::open(path)?, &mut h)?;
        Ok(hex::encode(h.finalize()) == f.sha256)
    }
    let mut stack: Vec<PathBuf> = Vec::new();
    for root in &m.paths {
        env.sandbox.check_read_entry(root)?;
        stack.push(PathBuf::from(root));
    }
    while let Some(path) = stack.pop() {
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_failed("read", &path, &e)),
        };
        let s = utf8(&path)?.to_string();
        let ft = md.file_type();
        let same = match want.get(s.as_str()) {
            None => {
                out.extra.push(s.clone());
                // A directory the snapshot does not have goes whole.
                seen.insert(s);
                continue;
            }
            Some(Want::File(f)) => {
                ft.is_file()
                    && same_file(&path, f, &md).map_err(|e| io_failed("read", &path, &e))?
            }
            Some(Want::Dir(mode)) => ft.is_dir() && md.mode() & 0o7777 == *mode,
            Some(Want::Link(target)) => {
                ft.is_symlink()
                    && fs::read_link(&path).is_ok_and(|t| t.as_os_str() == OsStr::new(target))
            }
        };
        if same {
            out.unchanged += 1;
        } else {
            out.changed.push(s.clone());
        }
        if ft.is_dir() {
            let names = fs::read_dir(&path)
                .and_then(|d| {
                    d.map(|e| e.map(|e| e.file_name()))
                        .collect::<io::Result<Vec<_>>>()
                })
                .map_err(|e| io_failed("read directory", &path, &e))?;
            stack.extend(names.into_iter().map(|n| path.join(n)));
        }
        seen.insert(s);
    }
    out.missing = want
        .keys()
        .filter(|p| !seen.contains(**p))
        .map(|p| p.to_string())
        .collect();
    out.changed.sort();
    out.missing.sort();
    out.extra.sort();
    Ok(out)
}
