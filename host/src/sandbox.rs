//! The sandbox: what a plugin may touch. Deny by default; the runbook's
//! `[plugin.grants]` table is the only source of permissions. Every host
//! import calls one `check_*` function here before it acts, and a refusal
//! names the capability, the exact resource and the runbook line to add.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

/// The `[plugin.grants]` table as written in the runbook.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    /// URL prefixes for `http` requests and HTTP probes.
    #[serde(default)]
    pub http: Vec<String>,
    /// `host:port` pairs for TCP probes (`host:*` for any port).
    #[serde(default)]
    pub tcp: Vec<String>,
    /// Programs (names looked up in PATH, or paths) the plugin may run.
    #[serde(default)]
    pub exec: Vec<String>,
    /// Command-line patterns of processes the plugin may signal or stop.
    #[serde(default)]
    pub signal: Vec<String>,
    /// Files or directories the plugin may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Files or directories the plugin may write (and read).
    #[serde(default)]
    pub write: Vec<String>,
    /// SQLite database files (or directories holding them).
    #[serde(default)]
    pub sqlite: Vec<String>,
    /// Host environment variables the plugin may read and pass to children.
    #[serde(default)]
    pub env: Vec<String>,
    /// Variables the plugin may set in a command's environment: exact names
    /// or `PREFIX*`. Loader and interpreter hooks are never allowed
    /// (`crate::imports::process::forbidden_child_env`).
    #[serde(default)]
    pub child_env: Vec<String>,
}

/// The kinds of capability a grant can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Http,
    Tcp,
    Exec,
    Signal,
    Read,
    Write,
    Sqlite,
    Env,
    ChildEnv,
}

impl Capability {
    pub const ALL: [Capability; 9] = [
        Self::Http,
        Self::Tcp,
        Self::Exec,
        Self::Signal,
        Self::Read,
        Self::Write,
        Self::Sqlite,
        Self::Env,
        Self::ChildEnv,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Exec => "exec",
            Self::Signal => "signal",
            Self::Read => "read",
            Self::Write => "write",
            Self::Sqlite => "sqlite",
            Self::Env => "env",
            Self::ChildEnv => "child_env",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused call: what was asked, and how to grant it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub capability: Capability,
    pub resource: String,
    pub hint: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} is not granted: {}",
            self.capability, self.resource, self.hint
        )
    }
}

impl std::error::Error for Denied {}

/// Where the grants came from, to point a refusal at the runbook line.
#[derive(Debug, Clone)]
pub struct GrantOrigin {
    pub plugin: String,
    pub runbook: PathBuf,
    /// 1-based line of the plugin's `[plugin.grants]` (or `[[plugin]]`).
    pub line: usize,
}

#[derive(Debug)]
struct HttpGrant {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

/// A plugin's compiled grants, with paths canonicalized once at load.
#[derive(Debug)]
pub struct Sandbox {
    spec: GrantsSpec,
    origin: GrantOrigin,
    base_dir: PathBuf,
    http: Vec<HttpGrant>,
    exec: Vec<(String, Option<PathBuf>)>,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    sqlite: Vec<PathBuf>,
    /// Pids this plugin spawned in this run, with their start times (so a
    /// reused pid is not mistaken for ours): it may always signal those.
    spawned: Mutex<HashMap<u32, Option<u64>>>,
    /// Never reachable through any grant: rewind's own files (state
    /// directory, compiled cache, runbook, components, the rewind binary).
    /// Nothing inside one may be touched, and nothing holding one may be
    /// written, renamed or removed.
    protected: Vec<Protected>,
}

/// A path rewind relies on that no plugin may change, and what it is (for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub path: PathBuf,
    pub what: String,
}

/// A grant that would let a plugin change what rewind relies on: refused
/// when the runbook is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantConflict {
    /// A `write` grant is, or holds, a protected path.
    WriteCoversProtected { grant: String, protected: Protected },
    /// An `exec` grant names a program a `write` grant lets the plugin
    /// rewrite.
    ExecInsideWrite {
        exec: String,
        program: PathBuf,
        write: String,
    },
}

/// A grant that cannot be understood: reported as a runbook error.
#[derive(Debug, thiserror::Error)]
#[error("grant {capability} = {value:?} is not valid: {reason}")]
pub struct BadGrant {
    pub capability: Capability,
    pub value: String,
    pub reason: String,
}

impl Sandbox {
    /// Compile a grants table. Relative paths are taken from `base_dir`
    /// (the runbook's directory).
    pub fn new(spec: GrantsSpec, origin: GrantOrigin, base_dir: &Path) -> Result<Self, BadGrant> {
        let bad = |capability, value: &str, reason: String| BadGrant {
            capability,
            value: value.to_string(),
            reason,
        };
        let http = spec
            .http
            .iter()
            .map(|g| {
                let url =
                    url::Url::parse(g).map_err(|e| bad(Capability::Http, g, e.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(bad(Capability::Http, g, "only http and https URLs".into()));
                }
                Ok(HttpGrant {
                    scheme: url.scheme().to_string(),
                    host: url.host_str().unwrap_or_default().to_string(),
                    port: url.port_or_known_default(),
                    path: url.path().to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        for t in &spec.tcp {
            if parse_host_port(t).is_none() {
                return Err(bad(
                    Capability::Tcp,
                    t,
                    "expected host:port or host:*".into(),
                ));
            }
        }
        for name in &spec.child_env {
            if let Some(reason) = crate::imports::process::bad_child_env_grant(name) {
                return Err(bad(Capability::ChildEnv, name, reason));
            }
        }
        for s in &spec.signal {
            if s.trim().len() < 3 {
                return Err(bad(
                    Capability::Signal,
                    s,
                    "a pattern this short would match unrelated processes; use at least 3 characters"
                        .into(),
                ));
            }
        }
        let paths = |cap, list: &[String]| -> Result<Vec<PathBuf>, BadGrant> {
            list.iter()
                .map(|p| resolve_path(base_dir, p).map_err(|e| bad(cap, p, e)))
                .collect()
        };
        let exec = spec
            .exec
            .iter()
            .map(|p| (p.clone(), resolve_program(base_dir, p)))
            .collect();
        Ok(Self {
            read: paths(Capability::Read, &spec.read)?,
            write: paths(Capability::Write, &spec.write)?,
            sqlite: paths(Capability::Sqlite, &spec.sqlite)?,
            http,
            exec,
            spec,
            origin,
            base_dir: base_dir.to_path_buf(),
            spawned: Mutex::new(HashMap::new()),
            protected: Vec::new(),
        })
    }

    /// Put a path (and everything under it) out of every grant's reach.
    /// `what` names it in refusals ("rewind's state directory").
    pub fn protect(&mut self, path: &Path, what: &str) {
        if let Ok(p) = resolve_path(&self.base_dir, &path.to_string_lossy()) {
            self.protected.push(Protected {
                path: p,
                what: what.to_string(),
            });
        }
    }

    /// Grants that would let the plugin change rewind's own files or the
    /// programs it is allowed to run. Any of these makes the runbook unusable:
    /// checking each call is not enough (a plugin that may write a directory
    /// may rename it away with rewind's state inside, or rewrite a granted
    /// program and then run it).
    pub fn conflicts(&self) -> Vec<GrantConflict> {
        let mut out = Vec::new();
        for (raw, root) in self.spec.write.iter().zip(&self.write) {
            for p in &self.protected {
                if p.path.starts_with(root) {
                    out.push(GrantConflict::WriteCoversProtected {
                        grant: raw.clone(),
                        protected: p.clone(),
                    });
                }
            }
        }
        for (exec, program) in &self.exec {
            // Where the program is, or could appear later (a path not
            // created yet, or a name in any PATH directory): a program the
            // plugin can put in place is as good as any program.
            let candidates: Vec<PathBuf> = match program {
                Some(p) => vec![p.clone()],
                None if exec.contains('/') => {
                    resolve_path(&self.base_dir, exec).into_iter().collect()
                }
                None => std::env::var_os("PATH")
                    .map(|path| {
                        std::env::split_paths(&path)
                            .filter_map(|d| {
                                resolve_path(&self.base_dir, &d.join(exec).to_string_lossy()).ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for (raw, root) in self.spec.write.iter().zip(&self.write) {
                if let Some(program) = candidates.iter().find(|c| c.starts_with(root)) {
                    out.push(GrantConflict::ExecInsideWrite {
                        exec: exec.clone(),
                        program: program.clone(),
                        write: raw.clone(),
                    });
                }
            }
        }
        out
    }

    pub fn spec(&self) -> &GrantsSpec {
        &self.spec
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    fn deny(&self, capability: Capability, resource: impl Into<String>, grant: &str) -> Denied {
        let resource = resource.into();
        Denied {
            hint: format!(
                "add {capability} = [{grant:?}] under [plugin.grants] of plugin {:?} in {}:{}",
                self.origin.plugin,
                self.origin.runbook.display(),
                self.origin.line
            ),
            capability,
            resource,
        }
    }

    /// An HTTP URL under a granted prefix (same scheme, host and port; path
    /// under the grant's path).
    pub fn check_http(&self, raw: &str) -> Result<url::Url, CheckError> {
        let url = url::Url::parse(raw)
            .map_err(|e| CheckError::Invalid(format!("bad URL {raw:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CheckError::Invalid(format!(
                "bad URL {raw:?}: only http and https"
            )));
        }
        let host = url.host_str().unwrap_or_default();
        let ok = self.http.iter().any(|g| {
            g.scheme == url.scheme()
                && g.host.eq_ignore_ascii_case(host)
                && g.port == url.port_or_known_default()
                && path_under(url.path(), &g.path)
        });
        if ok {
            Ok(url)
        } else {
            let origin = format!("{}://{}/", url.scheme(), url.authority());
            Err(self.deny(Capability::Http, raw, &origin).into())
        }
    }

    pub fn check_tcp(&self, host: &str, port: u16) -> Result<(), Denied> {
        let ok = self
            .spec
            .tcp
            .iter()
            .filter_map(|g| parse_host_port(g))
            .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port));
        if ok {
            Ok(())
        } else {
            let res = format!("{host}:{port}");
            Err(self.deny(Capability::Tcp, res.clone(), &res))
        }
    }

    /// A program: granted by the exact string, or both resolve to the same
    /// file. Returns the program to execute (resolved path when found).
    pub fn check_exec(&self, program: &str) -> Result<PathBuf, CheckError> {
        if program.trim().is_empty() {
            return Err(CheckError::Invalid("empty program name".into()));
        }
        let resolved = resolve_program(&self.base_dir, program);
        let ok = self
            .exec
            .iter()
            .any(|(g, gp)| g == program || (resolved.is_some() && gp.is_some() && *gp == resolved));
        if !ok {
            return Err(self.deny(Capability::Exec, program, program).into());
        }
        // Load-time checks refuse exec grants inside write grants; this
        // catches a program that resolves there now (a link changed since).
        if let Some(r) = &resolved
            && let Some((raw, _)) = self
                .spec
                .write
                .iter()
                .zip(&self.write)
                .find(|(_, root)| r.starts_with(root))
        {
            return Err(CheckError::Invalid(format!(
                "program {program:?} resolves to {}, inside write grant {raw:?}: a program the plugin may rewrite is never run",
                r.display()
            )));
        }
        // Run the program by the path it was found at, not the canonical
        // one: multi-call binaries (Debian's pg_wrapper behind psql and
        // pg_dump, busybox) choose what to be from the name they are run by.
        locate_program(&self.base_dir, program)
            .filter(|_| resolved.is_some())
            .ok_or_else(|| {
                CheckError::Invalid(format!("program {program:?} was not found (PATH or path)"))
            })
    }

    /// A signal pattern, for `stop-matching`: the granted pattern or a longer
    /// one that contains it (which can only match fewer processes).
    pub fn check_signal_pattern(&self, pattern: &str) -> Result<(), Denied> {
        if self
            .spec
            .signal
            .iter()
            .any(|g| pattern.contains(g.as_str()))
        {
            Ok(())
        } else {
            Err(self.deny(Capability::Signal, pattern, pattern))
        }
    }

    /// A pid: spawned by this plugin, or its command line matches a grant.
    /// Never pid 1, the host, or one of the host's ancestors.
    pub fn check_signal_pid(&self, pid: u32, cmdline: Option<&str>) -> Result<(), CheckError> {
        if is_protected_pid(pid) {
            return Err(CheckError::Invalid(format!(
                "pid {pid} is pid 1, rewind itself or one of its parents; it is never signalled"
            )));
        }
        if let Some(started) = self.spawned.lock().unwrap().get(&pid)
            && *started == start_time(pid)
        {
            return Ok(());
        }
        let Some(cmd) = cmdline else {
            return Err(CheckError::Failed(format!("no process with pid {pid}")));
        };
        if self.spec.signal.iter().any(|g| cmd.contains(g.as_str())) {
            Ok(())
        } else {
            Err(self
                .deny(Capability::Signal, format!("pid {pid} ({cmd})"), cmd.trim())
                .into())
        }
    }

    pub fn note_spawned(&self, pid: u32) {
        self.spawned.lock().unwrap().insert(pid, start_time(pid));
    }

    pub fn check_env(&self, name: &str) -> Result<(), Denied> {
        if self.spec.env.iter().any(|g| g == name) {
            Ok(())
        } else {
            Err(self.deny(Capability::Env, name, name))
        }
    }

    /// A variable the plugin sets in a command's environment: granted by
    /// name or by a `PREFIX*` pattern.
    pub fn check_child_env(&self, name: &str) -> Result<(), Denied> {
        let granted = self
            .spec
            .child_env
            .iter()
            .any(|g| match g.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => g == name,
            });
        if granted {
            Ok(())
        } else {
            Err(self.deny(Capability::ChildEnv, name, name))
        }
    }

    /// Host environment variables granted to children.
    pub fn granted_env(&self) -> impl Iterator<Item = (&str, String)> {
        self.spec
            .env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.as_str(), v)))
    }

    /// A path that may be read: under a `read` or `write` grant.
    pub fn check_read(&self, path: &str) -> Result<PathBuf, CheckError> {
        self.check_path(Capability::Read, path, true)
    }

    /// A path that may be written: under a `write` grant. The last component
    /// is not followed if it is a symlink (renaming or replacing a link acts
    /// on the link), but every directory above it is.
    pub fn check_write(&self, path: &str) -> Result<PathBuf, CheckError> {
        self.check_path(Capability::Write, path, false)
    }

    /// Like `check_read`, but a symlink in the last component is not
    /// followed (snapshotting a release link keeps the link).
    pub fn check_read_entry(&self, path: &str) -> Result<PathBuf, CheckError> {
        self.check_path(Capability::Read, path, false)
    }

    /// A database file under a `sqlite` grant.
    pub fn check_sqlite(&self, path: &str) -> Result<PathBuf, CheckError> {
        self.check_path(Capability::Sqlite, path, true)
    }

    fn check_path(
        &self,
        cap: Capability,
        raw: &str,
        follow_last: bool,
    ) -> Result<PathBuf, CheckError> {
        if raw.is_empty() {
            return Err(CheckError::Invalid("empty path".into()));
        }
        let resolved = if follow_last {
            resolve_path(&self.base_dir, raw)
        } else {
            resolve_entry(&self.base_dir, raw)
        }
        .map_err(|e| CheckError::Invalid(format!("path {raw:?}: {e}")))?;
        if let Some(p) = self
            .protected
            .iter()
            .find(|p| resolved.starts_with(&p.path))
        {
            return Err(CheckError::Invalid(format!(
                "path {raw:?} is inside {} {}, which plugins never touch directly{}",
                p.what,
                p.path.display(),
                if p.what.contains("state directory") {
                    " (use the storage key-value and snapshot calls)"
                } else {
                    ""
                }
            )));
        }
        // Writing, renaming or removing a directory that holds one of
        // rewind's files would move or delete it as surely as touching it.
        if cap != Capability::Read
            && let Some(p) = self
                .protected
                .iter()
                .find(|p| p.path.starts_with(&resolved))
        {
            return Err(CheckError::Invalid(format!(
                "path {raw:?} holds {} {}, so it is never written, renamed or removed by a plugin",
                p.what,
                p.path.display()
            )));
        }
        let roots: Vec<&PathBuf> = match cap {
            Capability::Read => self.read.iter().chain(self.write.iter()).collect(),
            Capability::Write => self.write.iter().collect(),
            Capability::Sqlite => self.sqlite.iter().collect(),
            _ => unreachable!("not a path capability"),
        };
        if roots.iter().any(|r| resolved.starts_with(r)) {
            Ok(resolved)
        } else {
            let shown = if resolved.as_os_str() == raw {
                raw.to_string()
            } else {
                format!("{raw} (resolves to {})", resolved.display())
            };
            Err(self
                .deny(cap, shown, &resolved.display().to_string())
                .into())
        }
    }

    /// Open, by capability, the granted directory that holds `resolved` (a
    /// path a `check_*` call returned for `cap`), and give `resolved`
    /// relative to it. Every later access resolves beneath that handle
    /// (`openat2(RESOLVE_BENEATH)` where the kernel has it, component by
    /// component otherwise), so a symbolic link or rename made after the
    /// check cannot lead the access out of the grant.
    ///
    /// The handle is the outermost grant that strictly holds the path: no
    /// grant of this capability holds that directory itself, so the plugin
    /// cannot swap it for a link. A path that is itself a grant root is
    /// reached from its parent, through its last component only.
    pub fn beneath(&self, cap: Capability, resolved: &Path) -> std::io::Result<Beneath> {
        let roots: Vec<&PathBuf> = match cap {
            Capability::Read => self.read.iter().chain(self.write.iter()).collect(),
            Capability::Write => self.write.iter().collect(),
            Capability::Sqlite => self.sqlite.iter().collect(),
            _ => unreachable!("not a path capability"),
        };
        let outside = || {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not under a {cap} grant", resolved.display()),
            )
        };
        let mut anchor = match roots
            .iter()
            .filter(|r| resolved.starts_with(r) && resolved != r.as_path())
            .min_by_key(|r| r.components().count())
        {
            Some(r) => r.to_path_buf(),
            None if roots.iter().any(|r| resolved == r.as_path()) => {
                resolved.parent().ok_or_else(outside)?.to_path_buf()
            }
            None => return Err(outside()),
        };
        // A granted directory that does not exist yet is reached from the
        // nearest directory above it that does.
        while !std::fs::symlink_metadata(&anchor).is_ok_and(|m| m.is_dir()) {
            if !anchor.pop() {
                return Err(outside());
            }
        }
        let dir = cap_std::fs::Dir::open_ambient_dir(&anchor, cap_std::ambient_authority())?;
        let rel = resolved
            .strip_prefix(&anchor)
            .map_err(|_| outside())?
            .to_path_buf();
        Ok(Beneath { dir, anchor, rel })
    }

    /// What is granted for one capability, as written.
    pub fn granted(&self, cap: Capability) -> &[String] {
        match cap {
            Capability::Http => &self.spec.http,
            Capability::Tcp => &self.spec.tcp,
            Capability::Exec => &self.spec.exec,
            Capability::Signal => &self.spec.signal,
            Capability::Read => &self.spec.read,
            Capability::Write => &self.spec.write,
            Capability::Sqlite => &self.spec.sqlite,
            Capability::Env => &self.spec.env,
            Capability::ChildEnv => &self.spec.child_env,
        }
    }

    /// Whether a declared need is covered by the grants (for `rewind check`).
    pub fn covers(&self, cap: Capability, need: &str) -> bool {
        match cap {
            Capability::Http => self.check_http(need).is_ok(),
            Capability::Tcp => parse_host_port(need)
                .and_then(|(h, p)| p.map(|p| (h, p)))
                .is_some_and(|(h, p)| self.check_tcp(&h, p).is_ok()),
            Capability::Exec => {
                matches!(self.check_exec(need), Ok(_) | Err(CheckError::Invalid(_)))
            }
            Capability::Signal => self.check_signal_pattern(need).is_ok(),
            Capability::Read => self.check_read(need).is_ok(),
            Capability::Write => self.check_write(need).is_ok(),
            Capability::Sqlite => self.check_sqlite(need).is_ok(),
            Capability::Env => self.check_env(need).is_ok(),
            Capability::ChildEnv => self.check_child_env(need).is_ok(),
        }
    }
}

/// A granted path held by capability: a directory handle and the path
/// beneath it. `rel` is empty when the path is the anchor itself.
#[derive(Debug)]
pub struct Beneath {
    pub dir: cap_std::fs::Dir,
    /// Where `dir` was opened, for messages.
    pub anchor: PathBuf,
    pub rel: PathBuf,
}

impl Beneath {
    /// `rel`, or `.` for the anchor itself (cap-std wants a path).
    pub fn path(&self) -> &Path {
        if self.rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.rel
        }
    }

    /// The directory holding the entry, opened beneath the anchor, and the
    /// entry's name in it. `None` for the anchor itself.
    pub fn parent(&self) -> std::io::Result<Option<(cap_std::fs::Dir, std::ffi::OsString)>> {
        let Some(name) = self.rel.file_name() else {
            return Ok(None);
        };
        let parent = self.rel.parent().unwrap_or(Path::new(""));
        let dir = if parent.as_os_str().is_empty() {
            self.dir.try_clone()?
        } else {
            self.dir.open_dir(parent)?
        };
        Ok(Some((dir, name.to_os_string())))
    }

    /// Open the entry itself, beneath the anchor, with `flags` plus
    /// `O_NOFOLLOW | O_CLOEXEC`: a symbolic link in its place is refused
    /// (`ELOOP`), never followed.
    pub fn open_nofollow(
        &self,
        flags: nix::fcntl::OFlag,
        mode: u32,
    ) -> std::io::Result<std::fs::File> {
        use nix::fcntl::OFlag;
        let Some((dir, name)) = self.parent()? else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path",
            ));
        };
        let fd = nix::fcntl::openat(
            &dir,
            name.as_os_str(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .map_err(std::io::Error::from)?;
        Ok(std::fs::File::from(fd))
    }
}

/// The directory `rel` under `dir` (empty or `.` for `dir` itself) as a
/// readable file descriptor, for fsync, futimens, fchmod and fchown, which
/// cap-std's path-only directory handles do not allow. Resolved beneath
/// `dir`; the last component is never a followed link.
pub fn open_dir_file(dir: &cap_std::fs::Dir, rel: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let open = |d: &cap_std::fs::Dir, name: &std::ffi::OsStr, flags: OFlag| {
        nix::fcntl::openat(d, name, flags, nix::sys::stat::Mode::empty())
            .map(std::fs::File::from)
            .map_err(std::io::Error::from)
    };
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            open(&dir.open_dir(parent)?, name, flags | OFlag::O_NOFOLLOW)
        }
        (_, Some(name)) => open(dir, name, flags | OFlag::O_NOFOLLOW),
        _ => open(dir, std::ffi::OsStr::new("."), flags),
    }
}

/// A failed check: refused by the grants, or not even a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    Denied(Denied),
    Invalid(String),
    Failed(String),
}

impl From<Denied> for CheckError {
    fn from(d: Denied) -> Self {
        Self::Denied(d)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(d) => d.fmt(f),
            Self::Invalid(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

impl From<CheckError> for crate::bindings::types::Error {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Denied(d) => d.into(),
            CheckError::Invalid(m) => Self::Invalid(m),
            CheckError::Failed(m) => Self::Failed(m),
        }
    }
}

fn path_under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') || path.len() == prefix.len() {
        return path.starts_with(prefix);
    }
    path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/')
}

fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (h, p) = s.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return None;
    }
    if p == "*" {
        return Some((h.to_string(), None));
    }
    Some((h.to_string(), Some(p.parse().ok()?)))
}

/// Where a program is: the path as given (relative to the runbook), or the
/// first match in PATH.
fn locate_program(base: &Path, program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = base.join(program);
        p.is_file().then_some(p)
    } else {
        which::which(program).ok()
    }
}

/// The file a program resolves to, symlinks followed: what grants compare.
fn resolve_program(base: &Path, program: &str) -> Option<PathBuf> {
    locate_program(base, program).and_then(|p| std::fs::canonicalize(p).ok())
}

/// Canonicalize a path that may not exist yet: the longest existing prefix
/// is canonicalized (symlinks resolved), the rest appended. `..` is refused
/// in the part that does not exist, where it could not be checked.
pub fn resolve_path(base: &Path, raw: &str) -> Result<PathBuf, String> {
    let full = base.join(raw);
    let mut existing = full.clone();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let name = match existing.components().next_back() {
                    Some(Component::Normal(n)) => n.to_os_string(),
                    Some(Component::ParentDir) => {
                        return Err("'..' in a part of the path that does not exist".into());
                    }
                    Some(Component::CurDir) => std::ffi::OsString::new(),
                    _ => return Err("no part of the path exists".into()),
                };
                rest.push(name);
                if !existing.pop() {
                    return Err("no part of the path exists".into());
                }
            }
        }
    }
}

/// Like `resolve_path`, but a symlink in the last component is not followed.
pub fn resolve_entry(base: &Path, raw: &str) -> Result<PathBuf, String> {
    let full = base.join(raw);
    match (full.parent(), full.file_name()) {
        (Some(parent), Some(name))
            if !matches!(full.components().next_back(), Some(Component::ParentDir)) =>
        {
            let mut p = resolve_path(base, &parent.to_string_lossy())?;
            p.push(name);
            Ok(p)
        }
        _ => resolve_path(base, raw),
    }
}

/// pid 1, the host, and the host's ancestors are never signalled.
pub fn is_protected_pid(pid: u32) -> bool {
    if pid <= 1 {
        return true;
    }
    let mut cur = std::process::id();
    for _ in 0..64 {
        if cur == pid {
            return true;
        }
        match parent_pid(cur) {
            Some(p) if p > 1 => cur = p,
            _ => return false,
        }
    }
    false
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// When a process started (clock ticks since boot, /proc/PID/stat field 22):
/// with the pid, it identifies one process even if the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A process's command line, arguments joined by spaces (like `pgrep -f`).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let s = String::from_utf8_lossy(&raw);
    Some(s.trim_end_matches('\0').replace('\0', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(spec: GrantsSpec, base: &Path) -> Sandbox {
        let origin = GrantOrigin {
            plugin: "p".into(),
            runbook: "rewind.toml".into(),
            line: 7,
        };
        Sandbox::new(spec, origin, base).unwrap()
    }

    #[test]
    fn http_prefixes_match_scheme_host_port_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = sandbox(
            GrantsSpec {
                http: vec!["http://127.0.0.1:8080/api".into()],
                ..Default::default()
            },
            dir.path(),
        );
        assert!(s.check_http("http://127.0.0.1:8080/api").is_ok());
        assert!(s.check_http("http://127.0.0.1:8080/api/x?y=1").is_ok());
        assert!(s.check_http("http://127.0.0.1:8080/apix").is_err());
        assert!(s.check_http("http://127.0.0.1:8081/api").is_err());
        assert!(s.check_http("https://127.0.0.1:8080/api").is_err());
        assert!(
            s.check_http("http://127.0.0.1:8080@evil.example/api")
                .is_err()
        );
        match s.check_http("http://127.0.0.1:9/x") {
            Err(CheckError::Denied(d)) => {
                assert_eq!(d.capability, Capability::Http);
                assert!(
                    d.hint.contains("http = [\"http://127.0.0.1:9/\"]"),
                    "{}",
                    d.hint
                );
                assert!(d.hint.contains("rewind.toml:7"), "{}", d.hint);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dotdot_and_symlinks_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let granted = dir.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), granted.join("link")).unwrap();
        let mut s = sandbox(
            GrantsSpec {
                write: vec!["granted".into()],
                ..Default::default()
            },
            dir.path(),
        );
        s.protect(&granted.join(".rewind"), "rewind's state directory");
        assert!(s.check_read("granted/new-file").is_ok());
        assert!(matches!(
            s.check_write("granted/.rewind/runs/x.jsonl"),
            Err(CheckError::Invalid(_))
        ));
        assert!(s.check_read("granted/../secret").is_err());
        assert!(s.check_read("granted/link").is_err());
        assert!(s.check_read("granted/missing/../../secret").is_err());
        // Writing the link itself (replacing it) is allowed; following it is not.
        assert!(s.check_write("granted/link").is_ok());
    }

    #[test]
    fn a_path_holding_a_protected_one_is_never_written_renamed_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join("inner/state")).unwrap();
        let mut s = sandbox(
            GrantsSpec {
                write: vec!["site/inner".into()],
                read: vec!["site".into()],
                ..Default::default()
            },
            dir.path(),
        );
        s.protect(&site.join("inner/state"), "rewind's state directory");
        for p in ["site/inner", "site/inner/state", "site/inner/state/runs/x"] {
            assert!(
                matches!(s.check_write(p), Err(CheckError::Invalid(ref m)) if m.contains("state directory")),
                "{p}: {:?}",
                s.check_write(p)
            );
        }
        // Reading (listing) a directory that holds it is fine; reading inside is not.
        assert!(s.check_read("site/inner").is_ok());
        assert!(s.check_read("site/inner/state/runs").is_err());
        assert!(s.check_write("site/inner/other").is_ok());
        match s.conflicts().as_slice() {
            [GrantConflict::WriteCoversProtected { grant, protected }] => {
                assert_eq!(grant, "site/inner");
                assert!(protected.path.ends_with("inner/state"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exec_grant_inside_a_write_grant_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app/bin")).unwrap();
        std::fs::write(dir.path().join("app/bin/tool"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("app/bin/tool"), dir.path().join("tool"))
            .unwrap();
        // Granted by a link outside the write grant: compared by the file.
        let s = sandbox(
            GrantsSpec {
                exec: vec!["./tool".into()],
                write: vec!["app".into()],
                ..Default::default()
            },
            dir.path(),
        );
        assert!(matches!(
            s.conflicts().as_slice(),
            [GrantConflict::ExecInsideWrite { exec, write, .. }] if exec == "./tool" && write == "app"
        ));
        // A program that does not exist yet, which the plugin could create.
        let s = sandbox(
            GrantsSpec {
                exec: vec!["app/bin/later".into()],
                write: vec!["app".into()],
                ..Default::default()
            },
            dir.path(),
        );
        assert!(matches!(
            s.conflicts().as_slice(),
            [GrantConflict::ExecInsideWrite { exec, .. }] if exec == "app/bin/later"
        ));
        // And at call time, a granted program that resolves into a write
        // grant (a link changed after load) is not run.
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/prog"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/prog"), dir.path().join("prog"))
            .unwrap();
        let s = sandbox(
            GrantsSpec {
                exec: vec!["./prog".into()],
                write: vec!["app".into()],
                ..Default::default()
            },
            dir.path(),
        );
        assert!(s.conflicts().is_empty());
        std::fs::remove_file(dir.path().join("prog")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("app/bin/tool"), dir.path().join("prog"))
            .unwrap();
        assert!(
            matches!(s.check_exec("./prog"), Err(CheckError::Invalid(m)) if m.contains("inside write grant"))
        );
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_check_stays_beneath_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("granted/sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret"), "secret").unwrap();
        let s = sandbox(
            GrantsSpec {
                write: vec!["granted".into()],
                ..Default::default()
            },
            &base,
        );
        let w = s.check_write("granted/sub/new").unwrap();
        let r = s.check_read("granted/sub/secret").unwrap();
        // Between the check and the access: the directory becomes a link out.
        std::fs::rename(base.join("granted/sub"), base.join("granted/sub.old")).unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("granted/sub")).unwrap();
        let b = s.beneath(Capability::Write, &w).unwrap();
        assert_eq!(b.rel, Path::new("sub/new"));
        let mut o = cap_std::fs::OpenOptions::new();
        o.write(true).create(true);
        assert!(b.dir.open_with(b.path(), &o).is_err());
        let b = s.beneath(Capability::Read, &r).unwrap();
        assert!(b.dir.read(b.path()).is_err());
        assert!(!base.join("outside/new").exists());
        // The log of `spawn` does not follow a link in the last component
        // either, even one that stays inside the grant.
        std::os::unix::fs::symlink(base.join("granted/sub.old/x"), base.join("granted/log"))
            .unwrap();
        let log = s.check_write("granted/log").unwrap();
        let b = s.beneath(Capability::Write, &log).unwrap();
        let e = b
            .open_nofollow(
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT,
                0o644,
            )
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        assert!(!base.join("granted/sub.old/x").exists());
    }

    #[test]
    fn programs_run_by_the_name_they_were_found_at() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("multi"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("multi"), dir.path().join("psql")).unwrap();
        // Granted through the file the link resolves to, run by the link.
        let s = sandbox(
            GrantsSpec {
                exec: vec!["./multi".into()],
                ..Default::default()
            },
            dir.path(),
        );
        assert_eq!(s.check_exec("./psql").unwrap(), dir.path().join("./psql"));
        assert!(s.check_exec("./missing").is_err());
    }

    #[test]
    fn protected_pids() {
        assert!(is_protected_pid(1));
        assert!(is_protected_pid(std::process::id()));
        assert!(is_protected_pid(std::os::unix::process::parent_id()));
    }
}
