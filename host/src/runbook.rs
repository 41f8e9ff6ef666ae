//! The runbook: a TOML file naming the plugins to run, in order, with their
//! config and grants. Errors point at the file, line and column, show the
//! line, and say what was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::Limits;
use crate::sandbox::{GrantConflict, GrantOrigin, GrantsSpec, Sandbox};

/// What to do when a plugin's rollback fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Do not run the plugins after it (the default).
    Stop,
    /// Run the next plugins anyway.
    Continue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "de_duration_opt")]
    rto: Option<Duration>,
    state_dir: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    plugin: Vec<Spanned<RawPlugin>>,
    watch: Option<RawWatch>,
    #[serde(default)]
    drill: Vec<Spanned<RawDrill>>,
    #[serde(default)]
    policy: crate::policy::RawPolicy,
    #[serde(default)]
    notify: Vec<Spanned<crate::notify::NotifySpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default, deserialize_with = "de_duration_opt")]
    period: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    timeout: Option<Duration>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    initial_delay: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    cooldown: Option<Duration>,
    metrics: Option<std::net::SocketAddr>,
    metrics_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    name: String,
    #[serde(default)]
    description: String,
    plugin: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    rto: Option<Duration>,
    #[serde(default)]
    inject: Vec<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    detect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    detect_interval: Option<Duration>,
}

/// `[watch]`: how `rewind watch` probes, named as Kubernetes probes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// Time between two probe rounds (periodSeconds). Default 30 s.
    pub period: Duration,
    /// A round that takes longer counts as a failure (timeoutSeconds). Default 10 s.
    pub timeout: Duration,
    /// Consecutive breaches before the rollback (failureThreshold). Default 3.
    pub failure_threshold: u32,
    /// Consecutive healthy rounds that count as recovered (successThreshold). Default 1.
    pub success_threshold: u32,
    /// Wait before the first round (initialDelaySeconds). Default 0.
    pub initial_delay: Duration,
    /// After a rollback, no other one for this long. Default 5 min.
    pub cooldown: Duration,
    /// Serve Prometheus metrics on this address (`/metrics`). Off by default.
    pub metrics: Option<std::net::SocketAddr>,
    /// Rewrite this file with the metrics after every round (node_exporter's
    /// textfile collector). Relative to the runbook's directory.
    pub metrics_file: Option<PathBuf>,
}

impl Default for WatchSpec {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            failure_threshold: 3,
            success_threshold: 1,
            initial_delay: Duration::ZERO,
            cooldown: Duration::from_secs(300),
            metrics: None,
            metrics_file: None,
        }
    }
}

/// One `[[drill]]` scenario: how to break the system, who should notice,
/// and the RTO the recovery is timed against.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub name: String,
    pub description: String,
    /// The plugin that should detect and repair it (default: the first).
    pub plugin: String,
    /// Default: the runbook's `rto`.
    pub rto: Option<Duration>,
    /// Commands that break the system, run with the plugin's grants.
    pub inject: Vec<Vec<String>>,
    /// How long to poll the assessment for the breakage. Default 5 min.
    pub detect_timeout: Duration,
    /// Between two assessments. Default 1 s.
    pub detect_interval: Duration,
    pub line: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "de_duration_opt")]
    cpu: Option<Duration>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    memory: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    query_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    read_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    kv_bytes: Option<usize>,
    #[serde(default)]
    findings: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    message_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    log_message_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    log_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    component_bytes: Option<usize>,
    #[serde(default)]
    actions: Option<u64>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    call_time: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    step_time: Option<Duration>,
    #[serde(default, deserialize_with = "de_bytes_opt")]
    snapshot_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    snapshot_time: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    component: Spanned<String>,
    #[serde(default = "default_on_failure")]
    on_failure: OnFailure,
    #[serde(default)]
    config: toml::Table,
    grants: Option<Spanned<GrantsSpec>>,
    #[serde(default)]
    policy: crate::policy::RawPolicy,
}

fn default_on_failure() -> OnFailure {
    OnFailure::Stop
}

/// A parsed, validated runbook.
#[derive(Debug)]
pub struct Runbook {
    /// The file, as given.
    pub path: PathBuf,
    /// The directory relative paths are taken from.
    pub dir: PathBuf,
    pub name: String,
    pub description: String,
    pub rto: Option<Duration>,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub plugins: Vec<PluginSpec>,
    pub watch: WatchSpec,
    pub drills: Vec<DrillSpec>,
    /// What no plugin may write, rename or remove, nor reach through a
    /// grant: the state directory, the compiled cache, this file, every
    /// component and the rewind binary, with what each is (for messages).
    pub protected: Vec<(PathBuf, String)>,
    /// SHA-256 of the runbook as run, after `${...}` substitution: a
    /// resumed run checks it has not changed since the run started.
    pub sha256: String,
    /// `[[notify]]`: who is told what.
    pub notify: Vec<crate::notify::NotifySpec>,
}

/// One `[[plugin]]` entry.
#[derive(Debug)]
pub struct PluginSpec {
    pub name: String,
    pub component: PathBuf,
    pub on_failure: OnFailure,
    /// The `[plugin.config]` table as JSON, handed to the plugin.
    pub config: String,
    pub grants: GrantsSpec,
    /// 1-based lines, for messages.
    pub line: usize,
    pub component_line: usize,
    pub grants_line: usize,
    /// The line of each `write` and `exec` grant entry, to name it when it
    /// is refused: (capability, value as written, line).
    pub grant_lines: Vec<(&'static str, String, usize)>,
    /// `[policy]` with this plugin's `[plugin.policy]` over it.
    pub policy: crate::policy::Policy,
}

impl PluginSpec {
    /// Compile this plugin's grants into its sandbox.
    pub fn sandbox(&self, runbook: &Runbook) -> Result<Sandbox, RunbookError> {
        let origin = GrantOrigin {
            plugin: self.name.clone(),
            runbook: runbook.path.clone(),
            line: self.grants_line,
        };
        let mut sandbox =
            Sandbox::new(self.grants.clone(), origin, &runbook.dir).map_err(|e| RunbookError {
                path: runbook.path.clone(),
                line: self.grants_line,
                column: 1,
                message: e.to_string(),
                snippet: None,
            })?;
        for (path, what) in &runbook.protected {
            sandbox.protect(path, what);
        }
        if let Some(conflict) = sandbox.conflicts().into_iter().next() {
            return Err(self.conflict_error(runbook, conflict));
        }
        Ok(sandbox)
    }

    fn grant_line(&self, cap: &str, value: &str) -> usize {
        self.grant_lines
            .iter()
            .find(|(c, v, _)| *c == cap && v == value)
            .map_or(self.grants_line, |(_, _, l)| *l)
    }

    fn conflict_error(&self, runbook: &Runbook, conflict: GrantConflict) -> RunbookError {
        let (line, message) = match conflict {
            GrantConflict::WriteCoversProtected { grant, protected } => {
                let line = self.grant_line("write", &grant);
                (
                    line,
                    format!(
                        "plugin {:?}: write grant {grant:?} (line {line}) holds {} {}, which a plugin must never write, rename or remove; grant the directories beside it instead{}",
                        self.name,
                        protected.what,
                        protected.path.display(),
                        if protected.what.contains("state directory") {
                            ", or set state_dir outside every write grant"
                        } else {
                            ""
                        }
                    ),
                )
            }
            GrantConflict::ExecInsideWrite {
                exec,
                program,
                write,
            } => {
                let line = self.grant_line("exec", &exec);
                let write_line = self.grant_line("write", &write);
                (
                    line,
                    format!(
                        "plugin {:?}: exec grant {exec:?} (line {line}) is {}, inside write grant {write:?} (line {write_line}): the plugin could rewrite the program and then run anything; keep granted programs outside every write grant",
                        self.name,
                        program.display()
                    ),
                )
            }
        };
        RunbookError {
            path: runbook.path.clone(),
            line,
            column: 1,
            message,
            snippet: None,
        }
    }
}

/// A runbook that cannot be used: where, and why.
#[derive(Debug, thiserror::Error)]
pub struct RunbookError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub snippet: Option<String>,
}

impl std::fmt::Display for RunbookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(s) = &self.snippet {
            write!(f, "\n{:>5} | {s}", self.line)?;
        }
        Ok(())
    }
}

impl Runbook {
    /// Read and validate a runbook file.
    pub fn load(path: &Path) -> Result<Self, RunbookError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunbookError {
            path: path.into(),
            line: 0,
            column: 0,
            message: format!("cannot read the runbook: {e}"),
            snippet: None,
        })?;
        Self::parse(path, &text)
    }

    /// Parse runbook text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RunbookError> {
        let text = interpolate(text)
            .map_err(|(offset, message)| error_at(path, &Expanded::plain(text), offset, message))?;
        // From here on, whatever the process writes has them masked.
        text.secrets.iter().for_each(|s| crate::redact::register(s));
        let raw: RawRunbook = toml::from_str(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            error_at(path, &text, offset, e.message().trim().to_string())
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if raw.name.trim().is_empty() {
            return Err(error_at(path, &text, 0, "`name` must not be empty".into()));
        }
        if raw.plugin.is_empty() {
            return Err(error_at(
                path,
                &text,
                text.len(),
                "the runbook has no [[plugin]] entries; add one with `name` and `component`".into(),
            ));
        }
        let mut plugins: Vec<PluginSpec> = Vec::new();
        for p in raw.plugin {
            let span = p.span();
            let p = p.into_inner();
            let name_span = p.name.span();
            let name = p.name.into_inner();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(error_at(
                    path,
                    &text,
                    name_span.start,
                    format!("plugin name {name:?} must be letters, digits, '-' or '_'"),
                ));
            }
            if plugins.iter().any(|q| q.name == name) {
                return Err(error_at(
                    path,
                    &text,
                    name_span.start,
                    format!("plugin name {name:?} is used twice"),
                ));
            }
            let component_line = line_of(&text, p.component.span().start);
            let component = dir.join(p.component.get_ref());
            let grants_line = p.grants.as_ref().map_or(line_of(&text, span.start), |g| {
                line_of(&text, g.span().start)
            });
            let config = serde_json::to_string(&p.config).expect("a TOML table is valid JSON");
            let grant_lines = match &p.grants {
                Some(g) => {
                    let from = g.span().start.min(text.len());
                    let g = g.get_ref();
                    let mut out = Vec::new();
                    for (cap, list) in [("write", &g.write), ("exec", &g.exec)] {
                        for v in list {
                            out.push((cap, v.clone(), entry_line(&text, from, v)));
                        }
                    }
                    out
                }
                None => Vec::new(),
            };
            let policy = p
                .policy
                .over(raw.policy.over(crate::policy::Policy::default()));
            plugins.push(PluginSpec {
                policy,
                name,
                component,
                on_failure: p.on_failure,
                config,
                grants: p.grants.map(Spanned::into_inner).unwrap_or_default(),
                line: line_of(&text, span.start),
                component_line,
                grants_line,
                grant_lines,
            });
        }
        let w = raw.watch.unwrap_or_default();
        let wd = WatchSpec::default();
        let watch = WatchSpec {
            period: w.period.unwrap_or(wd.period),
            timeout: w.timeout.unwrap_or(wd.timeout),
            failure_threshold: w.failure_threshold.unwrap_or(wd.failure_threshold).max(1),
            success_threshold: w.success_threshold.unwrap_or(wd.success_threshold).max(1),
            initial_delay: w.initial_delay.unwrap_or(wd.initial_delay),
            cooldown: w.cooldown.unwrap_or(wd.cooldown),
            metrics: w.metrics,
            metrics_file: w.metrics_file.as_deref().map(|f| dir.join(f)),
        };
        let mut notify = Vec::new();
        for n in raw.notify {
            let at = n.span().start;
            let n = n.into_inner();
            n.check().map_err(|m| error_at(path, &text, at, m))?;
            notify.push(n);
        }
        let mut drills: Vec<DrillSpec> = Vec::new();
        for d in raw.drill {
            let span = d.span();
            let d = d.into_inner();
            let plugin = match d.plugin {
                Some(p) => {
                    if !plugins.iter().any(|q| q.name == *p.get_ref()) {
                        return Err(error_at(
                            path,
                            &text,
                            p.span().start,
                            format!(
                                "drill {:?} names plugin {:?}, which the runbook does not have",
                                d.name,
                                p.get_ref()
                            ),
                        ));
                    }
                    p.into_inner()
                }
                None => plugins[0].name.clone(),
            };
            if d.name.trim().is_empty() {
                return Err(error_at(
                    path,
                    &text,
                    span.start,
                    "a [[drill]] needs a name".into(),
                ));
            }
            if drills.iter().any(|q| q.name == d.name) {
                return Err(error_at(
                    path,
                    &text,
                    span.start,
                    format!("drill name {:?} is used twice", d.name),
                ));
            }
            if let Some(bad) = d.inject.iter().find(|c| c.is_empty() || c[0].is_empty()) {
                return Err(error_at(
                    path,
                    &text,
                    span.start,
                    format!(
                        "drill {:?}: an inject command is empty ({bad:?}); write [\"program\", \"arg\", ...]",
                        d.name
                    ),
                ));
            }
            drills.push(DrillSpec {
                name: d.name,
                description: d.description,
                plugin,
                rto: d.rto.or(raw.rto),
                inject: d.inject,
                detect_timeout: d.detect_timeout.unwrap_or(Duration::from_secs(300)),
                detect_interval: d.detect_interval.unwrap_or(Duration::from_secs(1)),
                line: line_of(&text, span.start),
            });
        }
        let defaults = Limits::default();
        let state_dir = dir.join(raw.state_dir.as_deref().unwrap_or(".rewind"));
        let runbook = Self {
            path: path.to_path_buf(),
            dir,
            name: raw.name,
            description: raw.description,
            rto: raw.rto,
            state_dir,
            limits: Limits {
                cpu: raw.limits.cpu.unwrap_or(defaults.cpu),
                memory: raw.limits.memory.unwrap_or(defaults.memory),
                query_bytes: raw.limits.query_bytes.unwrap_or(defaults.query_bytes),
                read_bytes: raw.limits.read_bytes.unwrap_or(defaults.read_bytes),
                kv_bytes: raw.limits.kv_bytes.unwrap_or(defaults.kv_bytes),
                findings: raw.limits.findings.unwrap_or(defaults.findings),
                message_bytes: raw.limits.message_bytes.unwrap_or(defaults.message_bytes),
                log_message_bytes: raw
                    .limits
                    .log_message_bytes
                    .unwrap_or(defaults.log_message_bytes),
                log_bytes: raw.limits.log_bytes.unwrap_or(defaults.log_bytes),
                component_bytes: raw
                    .limits
                    .component_bytes
                    .unwrap_or(defaults.component_bytes),
                actions: raw.limits.actions.unwrap_or(defaults.actions),
                call_time: raw.limits.call_time.unwrap_or(defaults.call_time),
                step_time: raw.limits.step_time,
                snapshot_bytes: raw
                    .limits
                    .snapshot_bytes
                    .map_or(defaults.snapshot_bytes, |b| b as u64),
                snapshot_time: raw.limits.snapshot_time.unwrap_or(defaults.snapshot_time),
            },
            protected: Vec::new(),
            notify,
            sha256: {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            },
            plugins,
            watch,
            drills,
        };
        let mut runbook = runbook;
        runbook.protected = runbook.own_files();
        // Grants are checked now so a bad one is a runbook error, not a
        // failure halfway through a run.
        runbook.check_grants()?;
        Ok(runbook)
    }

    /// rewind's own files for this runbook: what no grant may reach.
    fn own_files(&self) -> Vec<(PathBuf, String)> {
        let mut out = vec![
            (
                self.state_dir.clone(),
                "rewind's state directory".to_string(),
            ),
            (self.path.clone(), "the runbook".to_string()),
        ];
        if let Some(cache) = crate::runtime::default_cache_dir() {
            out.push((cache, "rewind's compiled-code cache".to_string()));
        }
        if let Ok(exe) = std::env::current_exe() {
            out.push((exe, "the rewind binary".to_string()));
        }
        for p in &self.plugins {
            out.push((
                p.component.clone(),
                format!("the component of plugin {:?}", p.name),
            ));
        }
        out
    }

    /// Refuse the runbook if a grant is invalid or reaches a protected path.
    fn check_grants(&self) -> Result<(), RunbookError> {
        for p in &self.plugins {
            p.sandbox(self)?;
        }
        Ok(())
    }

    /// Protect one more path (the `--cache-dir` given on the command line)
    /// and check the grants again.
    pub fn protect(&mut self, path: &Path, what: &str) -> Result<(), RunbookError> {
        self.protected.push((path.to_path_buf(), what.to_string()));
        self.check_grants()
    }

    pub fn plugin(&self, name: &str) -> Option<&PluginSpec> {
        self.plugins.iter().find(|p| p.name == name)
    }

    pub fn state(&self) -> crate::state::StateDir {
        crate::state::StateDir::new(self.state_dir.clone())
    }
}

/// The 1-based line, in the file as written, of an offset of the expanded
/// text.
fn line_of(text: &Expanded, offset: usize) -> usize {
    line_in(&text.original, text.original_offset(offset.min(text.len())))
}

/// The line of a grant entry: the first line from `from` (the grants table)
/// holding the value quoted, before the next `[[` entry; else the table's.
fn entry_line(text: &Expanded, from: usize, value: &str) -> usize {
    let quoted = [format!("\"{value}\""), format!("'{value}'")];
    let from = from.min(text.len());
    // Back to the start of the table's line, then line by line.
    let mut offset = text[..from].rfind('\n').map_or(0, |i| i + 1);
    for (i, l) in text[offset..].split_inclusive('\n').enumerate() {
        if i > 0 && l.trim_start().starts_with("[[") {
            break;
        }
        if quoted.iter().any(|q| l.contains(q.as_str())) {
            return line_of(text, offset);
        }
        offset += l.len();
    }
    line_of(text, from)
}

fn line_in(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// An error at an offset of the expanded text. The line shown is the one
/// written in the file (with `${...}`, not the value), and secret values
/// are masked in the message (a TOML or type error may quote a value).
fn error_at(path: &Path, text: &Expanded, offset: usize, message: String) -> RunbookError {
    let mut secrets = crate::redact::Secrets::new();
    text.secrets.iter().for_each(|s| secrets.add(s));
    let message = secrets.redact(&message).into_owned();
    let offset = text.original_offset(offset.min(text.len()));
    let text = text.original.as_str();
    let line = line_in(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let snippet = text
        .lines()
        .nth(line - 1)
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty());
    RunbookError {
        path: path.into(),
        line,
        column: offset - start + 1,
        message,
        snippet,
    }
}

/// The runbook text after `${...}` substitution, with what it takes to
/// point errors at the file as written.
pub struct Expanded {
    /// What the TOML parser reads.
    pub text: String,
    /// The file as written. Error lines are shown from it, so a value that
    /// came from the environment is never printed with them.
    original: String,
    /// Each substitution: (start, end) in `text`, (start, end) in `original`.
    spans: Vec<(usize, usize, usize, usize)>,
    /// The values of `${secret:...}` references.
    pub secrets: Vec<String>,
}

impl std::ops::Deref for Expanded {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Expanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The expanded text holds secret values: show the file as written.
        f.debug_struct("Expanded")
            .field("original", &self.original)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Expanded {
    /// Text with nothing substituted.
    fn plain(text: &str) -> Self {
        Self {
            text: text.to_string(),
            original: text.to_string(),
            spans: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Where an offset of the expanded text is in the file as written: a
    /// position inside a substituted value is the start of its `${`.
    fn original_offset(&self, offset: usize) -> usize {
        match self.spans.iter().rev().find(|s| s.0 <= offset) {
            None => offset,
            Some(&(_, end, ostart, oend)) => {
                if offset < end {
                    ostart
                } else {
                    oend + (offset - end)
                }
            }
        }
    }
}

/// Where in the TOML syntax a `${...}` reference stands; its value is
/// written so that it stays one value there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Outside strings: a number, boolean, date or bare key.
    Bare,
    /// `# ...` to the end of the line: left as written.
    Comment,
    /// `"..."`
    Basic,
    /// `"""..."""`
    MlBasic,
    /// `'...'`
    Literal,
    /// `'''...'''`
    MlLiteral,
}

/// Replace `${NAME}`, `${NAME:-default}`, `${secret:NAME}` and
/// `${secret:NAME:-default}` with environment variables (or the default).
/// `$${` stays a literal `${`; comments are left as written.
///
/// The value is placed by where the reference stands, so it can never
/// change the file's structure: inside `"..."` it is escaped (a `"`, `\` or
/// line break in it is read back as itself); inside `'...'`, which has no
/// escapes, a value that would end the string is refused; outside quotes
/// only a number, boolean or bare word is accepted. Errors name the
/// variable, never its value. Offsets in errors are into `text`.
pub fn interpolate(text: &str) -> Result<Expanded, (usize, String)> {
    let b = text.as_bytes();
    let at = |i: usize, s: &str| b[i..].starts_with(s.as_bytes());
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut ctx = Ctx::Bare;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match (ctx, b[i]) {
            (Ctx::Comment, b'\n') => ctx = Ctx::Bare,
            (Ctx::Comment, _) => {}
            (Ctx::Bare, b'#') => ctx = Ctx::Comment,
            (Ctx::Bare, b'"') if at(i, "\"\"\"") => {
                ctx = Ctx::MlBasic;
                i += 3;
                continue;
            }
            (Ctx::Bare, b'"') => ctx = Ctx::Basic,
            (Ctx::Bare, b'\'') if at(i, "'''") => {
                ctx = Ctx::MlLiteral;
                i += 3;
                continue;
            }
            (Ctx::Bare, b'\'') => ctx = Ctx::Literal,
            // An escape: the next character is not a delimiter.
            (Ctx::Basic | Ctx::MlBasic, b'\\') => {
                i += 2;
                continue;
            }
            (Ctx::Basic, b'"') | (Ctx::Literal, b'\'') => ctx = Ctx::Bare,
            // An unterminated string: the TOML parser reports it.
            (Ctx::Basic | Ctx::Literal, b'\n') => ctx = Ctx::Bare,
            (Ctx::MlBasic, b'"') | (Ctx::MlLiteral, b'\'') if at(i, "\"\"\"") || at(i, "'''") => {
                // Up to two more quotes belong to the string's content.
                let q = b[i];
                let run = b[i..].iter().take_while(|&&c| c == q).count();
                i += run.min(5);
                ctx = Ctx::Bare;
                continue;
            }
            (_, b'$') if at(i, "$${") => {
                out.push_str(&text[copied..i]);
                out.push_str("${");
                i += 3;
                copied = i;
                continue;
            }
            (_, b'$') if at(i, "${") => {
                out.push_str(&text[copied..i]);
                let (placed, secret, consumed) =
                    substitute(ctx, &text[i..]).map_err(|message| (i, message))?;
                if let Some(s) = secret
                    && !secrets.contains(&s)
                {
                    secrets.push(s);
                }
                let start = out.len();
                out.push_str(&placed);
                spans.push((start, out.len(), i, i + consumed));
                i += consumed;
                copied = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&text[copied.min(text.len())..]);
    Ok(Expanded {
        text: out,
        original: text.to_string(),
        spans,
        secrets,
    })
}

/// One `${...}` at the start of `rest`, standing in `ctx`: the text to
/// write, the value if it is secret, and how many bytes the reference took.
fn substitute(ctx: Ctx, rest: &str) -> Result<(String, Option<String>, usize), String> {
    let Some(end) = rest[2..].find('}') else {
        return Err("unclosed `${` (write `$${` for a literal)".into());
    };
    let expr = &rest[2..2 + end];
    let (marked, var) = match expr.strip_prefix("secret:") {
        Some(v) => (true, v),
        None => (false, expr),
    };
    let (name, default) = match var.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (var, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`${{{expr}}}` is not a variable name"));
    }
    // A variable whose name says it holds a secret is one, marked or not:
    // forgetting `secret:` on `${DB_PASSWORD}` must not print it.
    let secret = marked || secret_name(name);
    let value = match (std::env::var(name), default) {
        (Ok(v), _) if !v.is_empty() => v,
        (_, Some(d)) => d.to_string(),
        _ => {
            return Err(format!(
                "environment variable {name} is not set (used as `${{{expr}}}`); set it, or give a default: `${{{expr}:-value}}`"
            ));
        }
    };
    let chars = value.chars().count();
    let min = crate::redact::MIN_SECRET_CHARS;
    if secret && (1..min).contains(&chars) {
        return Err(format!(
            "the value of secret {name} is {chars} character(s) long; a secret shorter than {min} characters cannot be masked in output without masking ordinary text (and what is masked would give it away): use a longer secret{}",
            if marked {
                format!(", or drop `secret:` (`${{{name}}}`) if it is not secret")
            } else {
                format!(" ({name} is taken as secret by its name)")
            }
        ));
    }
    let placed = place(ctx, &value)
        .map_err(|why| format!("the value of {name} (used as `${{{expr}}}`) {why}"))?;
    let secret = (secret && !value.is_empty()).then_some(value);
    Ok((placed, secret, end + 3))
}

/// Whether an environment variable's name says it holds a secret: it
/// contains PASSWORD, PASSWD, SECRET, TOKEN, CREDENTIAL, PRIVATE_KEY,
/// API_KEY or APIKEY, or its last `_` part is PASS, KEY, AUTH, COOKIE or
/// DSN, or it is DATABASE_URL (connection strings carry passwords).
pub fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    const ANYWHERE: [&str; 8] = [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "PRIVATE_KEY",
        "API_KEY",
        "APIKEY",
    ];
    const LAST: [&str; 5] = ["PASS", "KEY", "AUTH", "COOKIE", "DSN"];
    ANYWHERE.iter().any(|w| upper.contains(w))
        || upper.rsplit('_').next().is_some_and(|l| LAST.contains(&l))
        || upper.ends_with("DATABASE_URL")
}

/// A value as it must be written where the reference stands, or why it
/// cannot be (without the value: it may be secret).
fn place(ctx: Ctx, value: &str) -> Result<String, &'static str> {
    let control = |allowed: &[char]| {
        value
            .chars()
            .any(|c| c.is_control() && !allowed.contains(&c))
    };
    match ctx {
        Ctx::Basic | Ctx::MlBasic => Ok(crate::redact::toml_escape(value)),
        Ctx::Bare => {
            if !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-+.:".contains(c))
            {
                // A number, boolean, date or bare key, as written.
                return Ok(value.to_string());
            }
            // Any other TOML value (an array, an inline table, a quoted
            // string) is parsed on its own and written back canonically:
            // one value, whatever comments, line breaks or `key =` it held.
            match value.parse::<toml::Value>() {
                Ok(v) => Ok(v.to_string()),
                Err(_) => Err(
                    "is not one TOML value (a number, boolean, date, array or inline table) or a bare word, and the reference is outside quotes; put it inside a string: \"${...}\"",
                ),
            }
        }
        Ctx::Literal if value.contains('\'') || control(&['\t']) => Err(
            "has a ' or a control character, which a '...' string cannot hold; use a \"...\" string, where it is escaped",
        ),
        Ctx::MlLiteral if value.contains('\'') || control(&['\t', '\n']) => Err(
            "has a ' or a control character, which a '''...''' string cannot hold safely; use a \"\"\"...\"\"\" string, where it is escaped",
        ),
        Ctx::Literal | Ctx::MlLiteral => Ok(value.to_string()),
        // Not reached: comments are copied as written.
        Ctx::Comment => Ok(String::new()),
    }
}

pub(crate) fn de_duration_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}); write e.g. \"90s\", \"7m\" or \"1h\""
        ))
    })
}

fn de_bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let s = String::deserialize(d)?;
    parse_bytes(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{s:?} is not a size; write e.g. \"64MiB\" or \"1GiB\""
        ))
    })
}

/// "64MiB", "1GiB", "512KiB", "1000000" (bytes).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Runbook, RunbookError> {
        Runbook::parse(Path::new("/tmp/rb/rewind.toml"), text)
    }

    const OK: &str = r#"
name = "svc"
rto = "7m"
[limits]
cpu = "2s"
memory = "64MiB"
[[plugin]]
name = "a"
component = "a.wasm"
[plugin.config]
port = 8080
[plugin.grants]
http = ["http://127.0.0.1:8080/"]
"#;

    #[test]
    fn parses_a_runbook() {
        let rb = parse(OK).unwrap();
        assert_eq!(rb.rto, Some(Duration::from_secs(420)));
        assert_eq!(rb.limits.cpu, Duration::from_secs(2));
        assert_eq!(rb.limits.memory, 64 << 20);
        assert_eq!(rb.plugins[0].config, r#"{"port":8080}"#);
        assert_eq!(rb.plugins[0].on_failure, OnFailure::Stop);
        assert_eq!(rb.plugins[0].grants_line, 12);
    }

    #[test]
    fn errors_point_at_line_and_key() {
        let bad = OK.replace("rto = \"7m\"", "rto = \"7 parsecs\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("not a duration"), "{e}");
        assert!(e.to_string().contains("rto = \"7 parsecs\""), "{e}");

        let bad = OK.replace("[plugin.config]", "on_failure = \"halt\"\n[plugin.config]");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("halt"), "{e}");

        let bad = OK.replace("http = [", "htp = [");
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("htp"), "{e}");

        let bad = format!("{OK}\n[[plugin]]\nname = \"a\"\ncomponent = \"b.wasm\"\n");
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("used twice"), "{e}");
    }

    #[test]
    fn grants_reaching_rewinds_files_or_granted_programs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("site/bin")).unwrap();
        std::fs::write(base.join("site/bin/tool"), "#!/bin/sh\n").unwrap();
        let rb = base.join("rewind.toml");
        let text = |state: &str, exec: &str| {
            format!(
                "name = \"x\"\nstate_dir = \"{state}\"\n\n[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n\n[plugin.grants]\nexec = [{exec}]\nwrite = [\n  \"site\",\n]\n"
            )
        };
        // The state directory inside the write grant: refused at the grant's line.
        let e = Runbook::parse(&rb, &text("site/state", "")).unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert!(
            e.message.contains("write grant \"site\" (line 11)")
                && e.message.contains("state directory"),
            "{e}"
        );
        // Beside it: fine.
        assert!(Runbook::parse(&rb, &text("state", "")).is_ok());
        // A granted program inside the write grant: both lines named.
        let e = Runbook::parse(&rb, &text("state", "\"site/bin/tool\"")).unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(
            e.message.contains("exec grant \"site/bin/tool\" (line 9)")
                && e.message.contains("write grant \"site\" (line 11)"),
            "{e}"
        );
        // The runbook itself and a component are protected too, and a
        // cache directory given later is checked like the default one.
        let mut r = Runbook::parse(&rb, &text("state", "")).unwrap();
        let e = r
            .protect(&base.join("site/cache"), "rewind's compiled-code cache")
            .unwrap_err();
        assert!(e.message.contains("compiled-code cache"), "{e}");
        let whole = text("state", "").replace("  \"site\",", "  \".\",");
        let e = Runbook::parse(&rb, &whole).unwrap_err();
        assert!(e.message.contains("holds"), "{e}");
    }

    #[test]
    fn variables_named_like_secrets_are_secrets() {
        for n in [
            "DB_PASSWORD",
            "PGPASSWORD",
            "API_TOKEN",
            "SLACK_WEBHOOK_SECRET",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_API_KEY",
            "REDIS_PASS",
            "SENTRY_DSN",
            "DATABASE_URL",
            "gh_token",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "PWD",
            "HOME",
            "SSH_KEY_PATH",
            "DEMO_ROOT",
            "QUEUE_APP_PORT",
            "KEYBOARD",
        ] {
            assert!(!secret_name(n), "{n}");
        }
        // The name decides, wherever the value comes from (here the default).
        let e = interpolate("a = \"${REWIND_UNSET_API_TOKEN:-tok-123456}\"\n").unwrap();
        assert_eq!(e.secrets, vec!["tok-123456".to_string()]);
    }

    #[test]
    fn interpolates_environment() {
        assert_eq!(
            interpolate("a ${REWIND_UNSET_X:-d} b").unwrap().text,
            "a d b"
        );
        assert_eq!(interpolate("$${X} $5").unwrap().text, "${X} $5");
        let (off, msg) = interpolate("x\ny ${REWIND_UNSET_Y}").unwrap_err();
        assert_eq!(off, 4);
        assert!(msg.contains("REWIND_UNSET_Y"));
        // SAFETY-free: PATH is always set in a test environment.
        assert!(!interpolate("\"${PATH}\"").unwrap().is_empty());
        // Comments are left as written: an unset variable there is fine.
        assert_eq!(
            interpolate("a = 1 # ${REWIND_UNSET_Z}\n").unwrap().text,
            "a = 1 # ${REWIND_UNSET_Z}\n"
        );
    }

    /// Defaults stand in for environment values here: they are placed by
    /// the same rules, and tests need not change the process environment.
    #[test]
    fn values_cannot_change_the_structure() {
        let evil = r#"x"\n[injected]\nkey = "y"#;
        // In a "..." string: escaped, read back exactly.
        let text = format!("a = \"<${{REWIND_UNSET_A:-{evil}}}>\"\n");
        let e = interpolate(&text).unwrap();
        let t: toml::Table = toml::from_str(&e).unwrap();
        assert_eq!(t["a"].as_str().unwrap(), format!("<{evil}>"));
        assert_eq!(t.len(), 1, "{t:?}");
        // The same in a multi-line string, and in a key.
        let text =
            format!("\"${{REWIND_UNSET_A:-k\"}}\" = \"\"\"${{REWIND_UNSET_A:-{evil}}}\"\"\"\n");
        let t: toml::Table = toml::from_str(&interpolate(&text).unwrap()).unwrap();
        assert_eq!(t["k\""].as_str().unwrap(), evil);
        // A literal string cannot hold a quote: refused, not broken.
        let (_, msg) = interpolate("a = '${REWIND_UNSET_A:-it's}'").unwrap_err();
        assert!(
            msg.contains("REWIND_UNSET_A") && msg.contains("'...'"),
            "{msg}"
        );
        // Outside quotes: a number or a bare word only.
        assert_eq!(
            interpolate("p = ${REWIND_UNSET_A:-8080}").unwrap().text,
            "p = 8080"
        );
        // A whole TOML value is written back as the one value it is.
        let e = interpolate("p = ${REWIND_UNSET_A:-[\"a\",\n \"b\"]}\nq = 1").unwrap();
        assert_eq!(e.text, "p = [\"a\", \"b\"]\nq = 1");
        for bad in ["1 # rest", "1\nx = 2", "a = 1", "[1] x"] {
            let (_, msg) = interpolate(&format!("p = ${{REWIND_UNSET_A:-{bad}}}")).unwrap_err();
            assert!(msg.contains("outside quotes"), "{bad:?}: {msg}");
        }
        let (off, msg) = interpolate("p = ${REWIND_UNSET_A:-1,x=2}").unwrap_err();
        assert_eq!(off, 4);
        assert!(msg.contains("outside quotes"), "{msg}");
        // `"${` inside a literal string, and an escaped quote, do not
        // confuse the reading of where strings end.
        let e = interpolate(
            r#"a = 'x"' # ${REWIND_UNSET_B}
b = "q\"${REWIND_UNSET_A:-v}""#,
        )
        .unwrap();
        let t: toml::Table = toml::from_str(&e).unwrap();
        assert_eq!(t["b"].as_str().unwrap(), "q\"v");
    }

    #[test]
    fn secrets_are_collected_and_never_shown_in_errors() {
        let e = interpolate("a = \"${secret:REWIND_UNSET_S:-hunter2-\"x}\"\n").unwrap();
        assert_eq!(e.secrets, vec!["hunter2-\"x".to_string()]);
        // Too short to mask.
        let (_, msg) = interpolate("a = \"${secret:REWIND_UNSET_S:-abc}\"").unwrap_err();
        assert!(msg.contains("3 character") && !msg.contains("abc"), "{msg}");
        // A value that a parser or type error quotes is masked in the
        // message, and the line shown is the one written in the file.
        // (The default is written in the file, so the line shown has it;
        // the message must not, and the line is the file's, unexpanded.)
        for tail in [" # why", " oops"] {
            let line = format!("rto = \"${{secret:REWIND_UNSET_S:-s3cr\"et-7}}\"{tail}");
            let err = parse(&OK.replace("rto = \"7m\"", &line)).unwrap_err();
            assert_eq!(err.line, 3, "{err}");
            assert!(!err.message.contains("s3cr"), "{err}");
            assert_eq!(err.snippet.as_deref(), Some(line.as_str()), "{err}");
        }
    }

    #[test]
    fn limits_have_defaults_and_can_be_raised() {
        let rb = parse(OK).unwrap();
        let d = Limits::default();
        assert_eq!(rb.limits.query_bytes, d.query_bytes);
        assert_eq!(rb.limits.findings, d.findings);
        let text = OK.replace(
            "memory = \"64MiB\"",
            "memory = \"64MiB\"\nquery_bytes = \"1GiB\"\nread_bytes = \"1MiB\"\nkv_bytes = \"2MiB\"\nfindings = 7\nmessage_bytes = \"1KiB\"\nlog_message_bytes = \"2KiB\"\nlog_bytes = \"3MiB\"\ncomponent_bytes = \"4MiB\"\nactions = 9",
        );
        let l = parse(&text).unwrap().limits;
        assert_eq!(
            (l.query_bytes, l.read_bytes, l.kv_bytes, l.findings),
            (1 << 30, 1 << 20, 2 << 20, 7)
        );
        assert_eq!(
            (
                l.message_bytes,
                l.log_message_bytes,
                l.log_bytes,
                l.component_bytes
            ),
            (1 << 10, 2 << 10, 3 << 20, 4 << 20)
        );
        assert_eq!(l.actions, 9);
        let e = parse(&OK.replace("memory = \"64MiB\"", "kv_bytes = \"lots\"")).unwrap_err();
        assert!(e.message.contains("not a size"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("10"), Some(10));
        assert_eq!(parse_bytes("1 GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("lots"), None);
    }
}
