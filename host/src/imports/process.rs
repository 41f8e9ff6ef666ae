//! `rewind:plugin/process`: running granted programs and signalling
//! processes. Every call but `env` is a side effect: it is checked against
//! the grants, recorded through `PluginEnv::side_effect`, and only carried
//! out when that says so (never in dry runs and checks).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use nix::errno::Errno;
use nix::sys::signal::{Signal as NixSignal, kill, killpg};
use nix::unistd::Pid;

use super::health::{matching_pids, proc_state};
use crate::bindings::process::{Command, Host, Output, SignalKind};
use crate::bindings::types::Error;
use crate::sandbox::{cmdline, is_protected_pid};
use crate::state::{HostState, PluginEnv};

/// Captured stdout and stderr are each cut at this size.
pub const OUTPUT_CAP: usize = 1 << 20;
/// `run`'s timeout when the plugin gives 0.
const DEFAULT_RUN_TIMEOUT_MS: u64 = 60_000;
/// How often `stop` looks whether a signalled process is gone.
const POLL: Duration = Duration::from_millis(20);
/// How long a process may take to disappear after KILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Host variables every child gets (when the host has them).
const BASE_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

impl Host for HostState {
    async fn run(&mut self, cmd: Command) -> Result<Output, Error> {
        self.timed_async(|env| async move { run_async(&env, cmd).await })
            .await
    }

    async fn spawn(&mut self, cmd: Command, log_path: String) -> Result<u32, Error> {
        self.blocking(move |env| spawn(env, cmd, &log_path)).await
    }

    async fn signal(&mut self, pid: u32, sig: SignalKind) -> Result<(), Error> {
        self.blocking(move |env| signal(env, pid, sig)).await
    }

    async fn stop(&mut self, pid: u32, grace_ms: u64) -> Result<bool, Error> {
        self.timed_async(|env| async move { stop(&env, pid, grace_ms).await })
            .await
    }

    async fn stop_matching(&mut self, pattern: String, grace_ms: u64) -> Result<u32, Error> {
        self.timed_async(|env| async move { stop_matching(&env, &pattern, grace_ms).await })
            .await
    }

    async fn env(&mut self, name: String) -> Result<Option<String>, Error> {
        self.timed(|env| env_var(env, &name))
    }
}

/// A command whose program and working directory were checked.
struct Prepared {
    /// The resolved executable.
    program: PathBuf,
    cwd: PathBuf,
    /// The command line as the plugin wrote it, for messages.
    shown: String,
}

fn prepare(env: &PluginEnv, cmd: &Command) -> Result<Prepared, Error> {
    let program = env.sandbox.check_exec(&cmd.program)?;
    let cwd = match &cmd.cwd {
        Some(dir) => {
            let resolved = env.sandbox.check_read(dir)?;
            if !resolved.is_dir() {
                return Err(Error::invalid(format!(
                    "working directory {dir:?} ({}) is not a directory",
                    resolved.display()
                )));
            }
            resolved
        }
        None => env.sandbox.base_dir().to_path_buf(),
    };
    for (k, v) in &cmd.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(Error::invalid(format!(
                "bad environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!(
                "environment variable {k:?} contains a NUL byte"
            )));
        }
        if let Some(why) = forbidden_child_env(k) {
            return Err(Error::invalid(format!(
                "environment variable {k} is never passed to a command ({why}): with it the plugin could run code of its choosing as rewind's user; no grant allows it. Command not run: {}",
                shown_command(&cmd.program, &cmd.args)
            )));
        }
        env.sandbox.check_child_env(k)?;
    }
    if let Some(a) = cmd.args.iter().find(|a| a.contains('\0')) {
        return Err(Error::invalid(format!(
            "argument {a:?} contains a NUL byte"
        )));
    }
    Ok(Prepared {
        program,
        cwd,
        shown: shown_command(&cmd.program, &cmd.args),
    })
}

/// Variables a plugin may never set in a command's environment, whatever
/// the grants say: each makes the dynamic loader, libc or an interpreter the
/// child may start load code or configuration from a path the plugin
/// chooses (and a plugin with a `write` grant can put a file there). The
/// list is names with a trailing `*` for prefixes; matching ignores case,
/// as some tools (npm) read their variables in any case.
const FORBIDDEN_CHILD_ENV: &[(&str, &str)] = &[
    // The dynamic loader and libc.
    ("LD_*", "the dynamic loader loads libraries named by it"),
    ("DYLD_*", "the dynamic loader loads libraries named by it"),
    ("GCONV_PATH", "libc loads character-set modules from it"),
    ("GETCONF_DIR", "libc reads configuration from it"),
    ("GLIBC_TUNABLES", "it reconfigures libc in the child"),
    ("MALLOC_*", "it reconfigures libc's allocator"),
    ("HOSTALIASES", "libc's resolver reads a file named by it"),
    ("LOCALDOMAIN", "it redirects name resolution"),
    ("RES_OPTIONS", "it reconfigures libc's resolver"),
    ("RESOLV_*", "it reconfigures libc's resolver"),
    ("LOCPATH", "libc loads locale data from it"),
    ("NLSPATH", "libc loads message catalogs from it"),
    ("NIS_PATH", "libc's NIS lookups follow it"),
    ("TZDIR", "libc loads time-zone files from it"),
    (
        "OPENSSL_*",
        "OpenSSL loads configuration and engines (shared objects) from it",
    ),
    // Shells.
    ("BASH_ENV", "bash runs the file it names"),
    ("ENV", "sh runs the file it names"),
    ("BASH_FUNC_*", "bash imports functions from it"),
    ("SHELLOPTS", "it changes how shells run scripts"),
    ("BASHOPTS", "it changes how shells run scripts"),
    (
        "PS4",
        "shells expand it (command substitution) while tracing",
    ),
    ("PROMPT_COMMAND", "bash runs it"),
    ("IFS", "it changes how shells split words"),
    ("CDPATH", "it changes where shell scripts cd to"),
    ("GLOBIGNORE", "it changes how shells expand globs"),
    ("ZDOTDIR", "zsh runs startup files from it"),
    // The child's view of the system: children get the host's PATH and
    // HOME, so a granted program finds the programs and configuration
    // (.gitconfig, .npmrc ...) the operator set up, not the plugin's.
    (
        "PATH",
        "children look up programs in it; they get rewind's own PATH",
    ),
    (
        "HOME",
        "programs read configuration (and hooks) from it; children get rewind's own HOME",
    ),
    ("XDG_*", "programs read configuration from it"),
    // Interpreters and tools that load code or run commands from variables.
    ("PYTHON*", "Python loads modules or runs files named by it"),
    ("PERL*", "Perl loads modules or options from it"),
    ("RUBY*", "Ruby loads code or options from it"),
    ("GEM_*", "Ruby loads gems from it"),
    ("BUNDLE_*", "Bundler runs the Gemfile it names"),
    ("NODE_OPTIONS", "Node.js preloads modules named by it"),
    ("NODE_PATH", "Node.js loads modules from it"),
    (
        "NODE_REPL_EXTERNAL_MODULE",
        "Node.js loads the module it names",
    ),
    (
        "NPM_CONFIG_*",
        "npm runs scripts with the shell and options it sets",
    ),
    ("LUA_*", "Lua runs or loads code from it"),
    ("PHPRC", "PHP loads configuration (and extensions) from it"),
    (
        "PHP_INI_SCAN_DIR",
        "PHP loads configuration (and extensions) from it",
    ),
    ("TCLLIBPATH", "Tcl loads packages from it"),
    ("R_PROFILE*", "R runs the file it names"),
    ("JAVA_TOOL_OPTIONS", "the JVM loads agents named by it"),
    ("_JAVA_OPTIONS", "the JVM loads agents named by it"),
    ("JDK_JAVA_OPTIONS", "the JVM loads agents named by it"),
    ("CLASSPATH", "the JVM loads classes from it"),
    ("DOTNET_STARTUP_HOOKS", ".NET runs the assemblies it names"),
    (
        "GOFLAGS",
        "the go tool runs programs named by it (-toolexec)",
    ),
    ("GIT_SSH", "git runs the program it names"),
    ("GIT_SSH_COMMAND", "git runs the command it names"),
    ("GIT_PROXY_COMMAND", "git runs the command it names"),
    ("GIT_ASKPASS", "git runs the program it names"),
    ("SSH_ASKPASS", "ssh runs the program it names"),
    ("GIT_EXEC_PATH", "git runs its subcommands from it"),
    ("GIT_EXTERNAL_DIFF", "git runs the program it names"),
    ("GIT_PAGER", "git runs the program it names"),
    ("GIT_EDITOR", "git runs the program it names"),
    ("GIT_SEQUENCE_EDITOR", "git runs the program it names"),
    (
        "GIT_CONFIG*",
        "git takes configuration (hooks, commands) from it",
    ),
    ("GIT_TEMPLATE_DIR", "git copies hooks from it"),
    ("GIT_DIR", "git runs the hooks of the repository it names"),
    ("GIT_WORK_TREE", "it points git at another tree"),
    ("PAGER", "programs run the pager it names"),
    ("MANPAGER", "programs run the pager it names"),
    ("EDITOR", "programs run the editor it names"),
    ("VISUAL", "programs run the editor it names"),
    ("LESSOPEN", "less runs the command it names"),
    ("LESSCLOSE", "less runs the command it names"),
    ("BROWSER", "programs run the browser it names"),
    ("SHELL", "programs run the shell it names"),
];

/// Why a variable may never be set in a command's environment, if so.
pub fn forbidden_child_env(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    FORBIDDEN_CHILD_ENV
        .iter()
        .find(|(pattern, _)| match pattern.strip_suffix('*') {
            Some(prefix) => upper.starts_with(prefix),
            None => upper == *pattern,
        })
        .map(|(_, why)| *why)
}

/// Why a `child_env` grant is refused when the runbook is read: an exact
/// name on the forbidden list (a pattern may still match harmless names;
/// the forbidden ones it covers are refused at the call).
pub fn bad_child_env_grant(grant: &str) -> Option<String> {
    if grant.is_empty() {
        return Some("empty variable name".into());
    }
    let name = grant.strip_suffix('*').unwrap_or(grant);
    if name.contains(['=', '\0', '*']) {
        return Some("a variable name, or a prefix followed by one `*`".into());
    }
    if grant.ends_with('*') {
        return None;
    }
    forbidden_child_env(name)
        .map(|why| format!("{name} is never passed to a command ({why}); no grant allows it"))
}

/// Programs that run whatever their arguments say: a shell, an interpreter
/// or a wrapper that executes another program. Granting one hands the
/// plugin arbitrary execution as rewind's user; `rewind check` warns.
const GENERAL_PURPOSE: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "ash",
    "busybox",
    "toybox",
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "env",
    "xargs",
    "find",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "setsid",
    "stdbuf",
    "sudo",
    "doas",
    "su",
    "runuser",
    "chroot",
    "unshare",
    "nsenter",
    "flock",
    "watch",
    "script",
    "expect",
    "make",
    "docker",
    "podman",
    "systemd-run",
    "ssh",
    "vim",
    "vi",
    "emacs",
];

/// Whether an exec grant hands out arbitrary execution, with what it is.
pub fn general_purpose_program(grant: &str) -> Option<&'static str> {
    let base = grant.rsplit('/').next().unwrap_or(grant);
    // python3.12, perl5.36, node18 ...: the interpreter with a version.
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    GENERAL_PURPOSE
        .iter()
        .find(|p| **p == base)
        .or_else(|| {
            GENERAL_PURPOSE
                .iter()
                .find(|p| **p == stem && !stem.is_empty())
        })
        .copied()
}

/// `program arg ...`, quoting arguments that would otherwise read wrong.
fn shown_command(program: &str, args: &[String]) -> String {
    let mut out = program.to_string();
    for a in args {
        out.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            out.push_str(&format!("{a:?}"));
        } else {
            out.push_str(a);
        }
    }
    out
}

/// The child's command: a clean environment (PATH, HOME, LANG, granted
/// variables, the command's own), its own process group.
fn base_command(env: &PluginEnv, p: &Prepared, cmd: &Command) -> StdCommand {
    let mut c = StdCommand::new(&p.program);
    c.args(&cmd.args).current_dir(&p.cwd).env_clear();
    for k in BASE_ENV {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    for (k, v) in env.sandbox.granted_env() {
        c.env(k, v);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    c.stdin(if cmd.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.process_group(0);
    // Children start with default signal dispositions and an empty signal
    // mask, as a service manager starts services. exec keeps ignored
    // signals ignored: rewind run under nohup (SIGHUP ignored) or from a
    // shell's background job (SIGINT ignored) would otherwise hand that to
    // every service it restarts, and a daemon's `trap ... HUP` would
    // silently never fire.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls
    // sigaction and sigprocmask, which are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, default_signals);
    }
    c
}

/// Between fork and exec: every catchable signal to its default action,
/// nothing blocked.
fn default_signals() -> std::io::Result<()> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
    for s in Signal::iterator() {
        if matches!(s, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler; sigaction is async-signal-safe.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
    // Real-time signals too (glibc keeps the two below SIGRTMIN for itself).
    for n in nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX() {
        // SAFETY: as above, the raw call for numbers `Signal` does not name.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::signal(n, nix::libc::SIG_DFL);
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    Ok(())
}

/// Feed a child's stdin from a thread, so a child that does not read it
/// cannot block the host; closing it ends the child's input.
fn feed_stdin(child: &mut std::process::Child, input: Option<String>) {
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Captured {
    data: Vec<u8>,
    truncated: bool,
}

/// Read a pipe to its end, keeping the first `OUTPUT_CAP` bytes in `buf`
/// and discarding the rest (so the child never blocks on a full pipe). The
/// bytes go to `buf` as they arrive, so what came before a give-up is kept.
async fn capture(src: Option<impl AsyncRead + Unpin>, buf: Arc<Mutex<Captured>>) {
    let Some(mut src) = src else { return };
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match src.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                let mut c = buf.lock().unwrap();
                let keep = n.min(OUTPUT_CAP - c.data.len());
                c.data.extend_from_slice(&chunk[..keep]);
                c.truncated |= keep < n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn take_captured(c: &Mutex<Captured>) -> (String, bool) {
    let c = std::mem::take(&mut *c.lock().unwrap());
    (String::from_utf8_lossy(&c.data).into_owned(), c.truncated)
}

/// SIGKILL a child and its whole process group (the child's pid is its
/// group id). The child is also killed by pid, in case it left the group.
/// Process groups of `process.run` children running now. They are
/// rewind's to answer for: when rewind is told to stop at once (a second
/// SIGINT/SIGTERM), they are killed with it rather than left as orphans.
/// (`spawn`'s daemons are detached by design and are not listed.)
fn running_groups() -> &'static std::sync::Mutex<std::collections::HashSet<u32>> {
    static G: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> =
        std::sync::OnceLock::new();
    G.get_or_init(Default::default)
}

/// Kill every `process.run` child still running (and its group).
pub fn kill_running_children() -> usize {
    let groups: Vec<u32> = running_groups()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for g in &groups {
        kill_group(*g);
    }
    groups.len()
}

/// A `process.run` child's group, listed in `running_groups` while alive.
/// Dropped before `finish` (the call's future dropped at its deadline or
/// by `cancel_calls`, or a panic), it kills the group: a call that ends
/// leaves no command of it running. The child itself is not reaped yet
/// then (tokio reaps it after `kill_on_drop`), so its pid, the group id,
/// cannot have been reused.
struct Running {
    pid: u32,
    finished: bool,
}

impl Running {
    fn new(pid: u32) -> Self {
        running_groups()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
        Self {
            pid,
            finished: false,
        }
    }

    /// The command ran its course: what it left in its group stays.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        running_groups()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
        if !self.finished {
            kill_group(self.pid);
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), NixSignal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), NixSignal::SIGKILL);
    }
}

/// `run` for a caller outside the call runtime (drills' injections): the
/// same command on a runtime of its own. Not for async code (it blocks).
pub(crate) fn run(env: &PluginEnv, cmd: Command) -> Result<Output, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed(format!("cannot start a runtime for {:?}: {e}", cmd.program)))?
        .block_on(run_async(env, cmd))
}

/// Run a command to its end or its timeout (cut to the call's deadline),
/// capturing its output. Dropping the future kills the command's process
/// group (see `Running`).
pub(crate) async fn run_async(env: &PluginEnv, cmd: Command) -> Result<Output, Error> {
    let p = prepare(env, &cmd)?;
    if !env.side_effect(format!("run {} (in {})", p.shown, p.cwd.display()))? {
        return Ok(Output {
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            duration_ms: 0,
            simulated: true,
        });
    }
    // Cut to what is left of the export call's wall-clock time.
    let timeout = env.cap(Duration::from_millis(if cmd.timeout_ms == 0 {
        DEFAULT_RUN_TIMEOUT_MS
    } else {
        cmd.timeout_ms
    }));
    let timeout_ms = timeout.as_millis() as u64;
    let mut c = tokio::process::Command::from(base_command(env, &p, &cmd));
    // A command a step runs dies with rewind, however rewind dies (SIGKILL
    // too): nothing is left running that no journal knows of. (A `spawn`ed
    // daemon is detached on purpose and gets no such signal.)
    let rewind = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec; prctl and getppid are
    // async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            // rewind may have died before the prctl took effect.
            if nix::unistd::getppid().as_raw() as u32 != rewind {
                return Err(std::io::Error::other(
                    "rewind exited before the command started",
                ));
            }
            Ok(())
        });
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The direct child, should the future be dropped; `Running` takes
        // care of the rest of its group.
        .kill_on_drop(true);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut child = c
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {:?}: {e}", cmd.program)))?;
    let Some(pid) = child.id() else {
        return Err(Error::failed(format!("lost track of {}", p.shown)));
    };
    let running = Running::new(pid);
    // Fed by a task of its own, so a child that does not read its stdin
    // cannot hold the host; closing it ends the child's input. The task
    // ends when the child does (a broken pipe).
    if let (Some(input), Some(mut stdin)) = (cmd.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    let stdout = Arc::new(Mutex::new(Captured::default()));
    let stderr = Arc::new(Mutex::new(Captured::default()));
    let captures = {
        let (o, e) = (child.stdout.take(), child.stderr.take());
        let (so, se) = (stdout.clone(), stderr.clone());
        async move {
            tokio::join!(capture(o, so), capture(e, se));
        }
    };
    tokio::pin!(captures);
    // The pipes are drained while the child is waited for (a child blocked
    // on a full pipe would never exit).
    let mut captured = false;
    let status = loop {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, child.wait()) => break r,
            () = &mut captures, if !captured => captured = true,
        }
    };
    let status = match status {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            kill_group(pid);
            return Err(Error::failed(format!("cannot wait for {}: {e}", p.shown)));
        }
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            if !captured {
                let _ = tokio::time::timeout(KILL_WAIT, &mut captures).await;
            }
            running.finish();
            return Err(Error::timeout(format!(
                "{} did not finish within {timeout_ms} ms; killed it and its process group",
                p.shown
            )));
        }
    };
    // Processes the child left in its group may hold the pipes open: they
    // get until the deadline, like the child, then the group is killed.
    if !captured
        && tokio::time::timeout_at(deadline, &mut captures)
            .await
            .is_err()
    {
        kill_group(pid);
        let _ = tokio::time::timeout(KILL_WAIT, &mut captures).await;
    }
    running.finish();
    let duration_ms = millis(start.elapsed());
    let (stdout, out_cut) = take_captured(&stdout);
    let (stderr, err_cut) = take_captured(&stderr);
    Ok(Output {
        exit_code: status.code(),
        stdout,
        stderr,
        truncated: out_cut || err_cut,
        duration_ms,
        simulated: false,
    })
}

/// Open (create, append to) a spawned process's log by capability: beneath
/// the write grant's directory, and never through a symbolic link in the
/// last component (checking the path and then opening it by name would
/// let a link swapped in between send the output outside the grant).
fn open_log(env: &PluginEnv, log: &std::path::Path) -> Result<std::fs::File, Error> {
    use nix::fcntl::OFlag;
    let failed =
        |e: std::io::Error| Error::failed(format!("cannot open log {}: {e}", log.display()));
    let b = env
        .sandbox
        .beneath(crate::sandbox::Capability::Write, log)
        .map_err(failed)?;
    if let Some(parent) = b.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        b.dir.create_dir_all(parent).map_err(|e| {
            Error::failed(format!(
                "cannot create {}: {e}",
                b.anchor.join(parent).display()
            ))
        })?;
    }
    b.open_nofollow(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND, 0o666)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                Error::invalid(format!(
                    "log {} is a symbolic link; spawn writes its log only to a file it does not have to follow a link to (remove the link or choose another path)",
                    log.display()
                ))
            } else {
                failed(e)
            }
        })
}

fn spawn(env: &PluginEnv, cmd: Command, log_path: &str) -> Result<u32, Error> {
    let p = prepare(env, &cmd)?;
    let log = env.sandbox.check_write(log_path)?;
    let what = format!(
        "spawn {} (in {}), output to {}",
        p.shown,
        p.cwd.display(),
        log.display()
    );
    if !env.side_effect(what)? {
        return Ok(0);
    }
    let out = open_log(env, &log)?;
    let err = out
        .try_clone()
        .map_err(|e| Error::failed(format!("cannot open log {}: {e}", log.display())))?;
    let mut c = base_command(env, &p, &cmd);
    c.stdout(out).stderr(err);
    let mut child = c
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {:?}: {e}", cmd.program)))?;
    let pid = child.id();
    env.sandbox.note_spawned(pid);
    feed_stdin(&mut child, cmd.stdin);
    // Reaped in the background: it never lingers as a zombie while rewind
    // lives, and it outlives rewind (its own process group).
    let _ = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(pid)
}

fn nix_signal(sig: SignalKind) -> NixSignal {
    match sig {
        SignalKind::Term => NixSignal::SIGTERM,
        SignalKind::Kill => NixSignal::SIGKILL,
        SignalKind::Int => NixSignal::SIGINT,
        SignalKind::Hup => NixSignal::SIGHUP,
        SignalKind::Usr1 => NixSignal::SIGUSR1,
        SignalKind::Usr2 => NixSignal::SIGUSR2,
    }
}

/// `TERM`, `KILL` ...: the name without `SIG`.
fn signal_name(sig: NixSignal) -> &'static str {
    let name = sig.as_str();
    name.strip_prefix("SIG").unwrap_or(name)
}

fn nix_pid(pid: u32) -> Result<Pid, Error> {
    i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| Error::invalid(format!("bad pid {pid}")))
}

/// Check that a pid may be signalled; returns its command line for messages.
fn check_pid(env: &PluginEnv, pid: u32) -> Result<(Pid, String), Error> {
    let npid = nix_pid(pid)?;
    let cmd = cmdline(pid);
    env.sandbox.check_signal_pid(pid, cmd.as_deref())?;
    Ok((npid, cmd.unwrap_or_else(|| "no command line".to_string())))
}

/// Whether a pid is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(npid) = nix_pid(pid) else { return false };
    // Read /proc after kill(0): a zombie reaped between the two has no
    // state any more, and is gone.
    !matches!(kill(npid, None), Err(Errno::ESRCH))
        && proc_state(pid).is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
}

/// Wait until none of `pids` is alive, at most `within`; returns those
/// still alive. Sleeps on tokio's timer, so a dropped call stops waiting.
async fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    let mut left = pids.to_vec();
    loop {
        left.retain(|&p| alive(p));
        let now = Instant::now();
        if left.is_empty() || now >= deadline {
            return left;
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

fn send(pid: u32, npid: Pid, sig: NixSignal) -> Result<(), Error> {
    kill(npid, sig).map_err(|e| match e {
        Errno::ESRCH => Error::failed(format!("no process with pid {pid}")),
        e => Error::failed(format!(
            "cannot send {} to pid {pid}: {}",
            signal_name(sig),
            e.desc()
        )),
    })
}

fn signal(env: &PluginEnv, pid: u32, sig: SignalKind) -> Result<(), Error> {
    let (npid, shown) = check_pid(env, pid)?;
    let sig = nix_signal(sig);
    if !env.side_effect(format!("send {} to pid {pid} ({shown})", signal_name(sig)))? {
        return Ok(());
    }
    send(pid, npid, sig)
}

async fn stop(env: &PluginEnv, pid: u32, grace_ms: u64) -> Result<bool, Error> {
    let (npid, shown) = check_pid(env, pid)?;
    if !alive(pid) {
        return Err(Error::failed(format!("no process with pid {pid}")));
    }
    let what = format!("stop pid {pid} ({shown}): TERM, then KILL after {grace_ms} ms");
    if !env.side_effect(what)? {
        return Ok(false);
    }
    match kill(npid, NixSignal::SIGTERM) {
        Err(Errno::ESRCH) => return Ok(false),
        Err(_) => send(pid, npid, NixSignal::SIGTERM)?,
        Ok(()) => {}
    }
    if wait_gone(&[pid], env.cap(Duration::from_millis(grace_ms)))
        .await
        .is_empty()
    {
        return Ok(false);
    }
    match kill(npid, NixSignal::SIGKILL) {
        Err(Errno::ESRCH) => return Ok(false),
        Err(_) => send(pid, npid, NixSignal::SIGKILL)?,
        Ok(()) => {}
    }
    if !wait_gone(&[pid], KILL_WAIT).await.is_empty() {
        return Err(Error::failed(format!(
            "pid {pid} ({shown}) is still alive {} s after KILL",
            KILL_WAIT.as_secs()
        )));
    }
    Ok(true)
}

async fn stop_matching(env: &PluginEnv, pattern: &str, grace_ms: u64) -> Result<u32, Error> {
    if pattern.trim().is_empty() {
        return Err(Error::invalid(
            "empty process pattern: it would match every process",
        ));
    }
    env.sandbox.check_signal_pattern(pattern)?;
    let pids: Vec<u32> = matching_pids(pattern)
        .into_iter()
        .filter(|&p| !is_protected_pid(p))
        .collect();
    let count = u32::try_from(pids.len()).unwrap_or(u32::MAX);
    if !env.side_effect(format!(
        "stop {count} processes matching {pattern:?}: pids {pids:?}"
    ))? {
        return Ok(count);
    }
    let mut problems = Vec::new();
    let mut signal_all = |pids: &[u32], sig: NixSignal| -> Vec<u32> {
        let mut sent = Vec::new();
        for &pid in pids {
            // The pid may have ended and been reused since it was listed.
            if !cmdline(pid).is_some_and(|c| c.contains(pattern)) {
                continue;
            }
            let Ok(npid) = nix_pid(pid) else { continue };
            match kill(npid, sig) {
                Ok(()) => sent.push(pid),
                Err(Errno::ESRCH) => {}
                Err(e) => problems.push(format!(
                    "cannot send {} to pid {pid}: {}",
                    signal_name(sig),
                    e.desc()
                )),
            }
        }
        sent
    };
    let termed = signal_all(&pids, NixSignal::SIGTERM);
    let left = wait_gone(&termed, env.cap(Duration::from_millis(grace_ms))).await;
    let killed = signal_all(&left, NixSignal::SIGKILL);
    for pid in wait_gone(&killed, KILL_WAIT).await {
        problems.push(format!(
            "pid {pid} is still alive {} s after KILL",
            KILL_WAIT.as_secs()
        ));
    }
    if !problems.is_empty() {
        return Err(Error::failed(format!(
            "could not stop every process matching {pattern:?}: {}",
            problems.join("; ")
        )));
    }
    Ok(count)
}

fn env_var(env: &PluginEnv, name: &str) -> Result<Option<String>, Error> {
    env.sandbox.check_env(name)?;
    Ok(std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    use super::*;
    use crate::bindings::types::Mode;
    use crate::imports::health::tests::{test_env, unique_marker};
    use crate::sandbox::GrantsSpec;

    /// The async imports, driven to their end from a plain test.
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn stop(env: &PluginEnv, pid: u32, grace_ms: u64) -> Result<bool, Error> {
        block_on(super::stop(env, pid, grace_ms))
    }

    fn stop_matching(env: &PluginEnv, pattern: &str, grace_ms: u64) -> Result<u32, Error> {
        block_on(super::stop_matching(env, pattern, grace_ms))
    }

    fn command(program: &str, args: &[&str]) -> Command {
        Command {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: Vec::new(),
            stdin: None,
            timeout_ms: 0,
        }
    }

    fn grants(exec: &[&str]) -> GrantsSpec {
        GrantsSpec {
            exec: exec.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Poll a condition for up to 60 s: a failure bound only, generous
    /// for a process start on a loaded machine.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A test-owned process whose command line contains `marker`. It waits
    /// on its stdin with the builtin `read`: it never forks, so no
    /// short-lived child shares its command line.
    fn looping_child(marker: &str) -> std::process::Child {
        StdCommand::new("sh")
            .args(["-c", "read x", marker])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn children_start_with_default_signal_dispositions() {
        // As under nohup: SIGHUP ignored in rewind itself (and left so for
        // the rest of this test process, which never gets a SIGHUP).
        #[allow(unsafe_code)]
        // SAFETY: installs SIG_IGN, no handler code.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGHUP,
                nix::sys::signal::SigHandler::SigIgn,
            )
            .unwrap();
        }
        let (_dir, env) = test_env(grants(&["sh"]), Mode::Execute);
        let out = run(
            &env,
            command("sh", &["-c", "grep -E '^Sig(Ign|Blk):' /proc/self/status"]),
        )
        .unwrap();
        assert_eq!(out.exit_code, Some(0), "{}", out.stderr);
        for line in out.stdout.lines() {
            let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            // Bit n-1 is signal n; 32 and 33 are glibc's own, which no
            // program can set (and some parents leave ignored).
            let glibc_internal = (1u64 << 31) | (1u64 << 32);
            assert_eq!(mask & !glibc_internal, 0, "{line}");
        }
    }

    #[test]
    fn run_captures_output_exit_code_and_a_clean_environment() {
        let mut spec = grants(&["sh"]);
        spec.read = vec![".".into()];
        spec.env = vec!["CARGO_PKG_NAME".into()];
        spec.child_env = vec!["FOO".into()];
        let (dir, env) = test_env(spec, Mode::Execute);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let script = "echo out; echo err >&2; cat; echo \"$FOO\"; \
                      echo \"${CARGO_MANIFEST_DIR:-unset}\"; echo \"${CARGO_PKG_NAME:-unset}\"; \
                      pwd; exit 3";
        let mut cmd = command("sh", &["-c", script]);
        cmd.cwd = Some("sub".into());
        cmd.env = vec![("FOO".into(), "bar".into())];
        cmd.stdin = Some("in\n".into());
        let out = run(&env, cmd).unwrap();
        let pkg = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "unset".into());
        let sub = dir.path().canonicalize().unwrap().join("sub");
        assert_eq!(
            out.stdout,
            format!("out\nin\nbar\nunset\n{pkg}\n{}\n", sub.display())
        );
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.exit_code, Some(3));
        assert!(!out.truncated && !out.simulated);
        let actions = env.take_actions();
        assert_eq!(actions.len(), 1);
        assert!(actions[0].executed);
        assert!(
            actions[0].what.starts_with("run sh -c \"echo out;"),
            "{}",
            actions[0].what
        );
        assert!(
            actions[0]
                .what
                .ends_with(&format!("(in {})", sub.display())),
            "{}",
            actions[0].what
        );

        let out = run(&env, command("sh", &["-c", "kill -9 $$"])).unwrap();
        assert_eq!(out.exit_code, None);
    }

    #[test]
    fn run_caps_output_without_blocking_the_child() {
        let (_dir, env) = test_env(grants(&["sh"]), Mode::Execute);
        let script = "head -c 3000000 /dev/zero >&2; echo done";
        let out = run(&env, command("sh", &["-c", script])).unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, "done\n");
        assert_eq!(out.stderr.len(), OUTPUT_CAP);
        assert!(out.truncated);
    }

    #[test]
    fn run_timeout_kills_the_whole_process_group() {
        let (dir, env) = test_env(grants(&["sh"]), Mode::Execute);
        // The timeout must fire after sh wrote its background child's pid,
        // which a loaded machine can delay past any fixed timeout: from
        // 500 ms, double it until it did.
        let mut timeout_ms = 500;
        loop {
            let mut cmd = command("sh", &["-c", "sleep 30 & echo $! > bg.pid; sleep 30"]);
            cmd.timeout_ms = timeout_ms;
            let start = Instant::now();
            match run(&env, cmd) {
                Err(Error::Timeout(m)) => {
                    assert!(
                        m.contains(&format!("did not finish within {timeout_ms} ms")),
                        "{m}"
                    );
                    assert!(m.contains("process group"), "{m}");
                }
                other => panic!("{other:?}"),
            }
            // Killed at the timeout, well before the 30 s sleep ends.
            assert!(start.elapsed() < Duration::from_secs(25));
            if dir.path().join("bg.pid").exists() || timeout_ms >= 16_000 {
                break;
            }
            timeout_ms *= 2;
        }
        let bg: u32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        eventually("the background sleep to be killed", || !alive(bg));
    }

    #[test]
    fn dry_runs_record_and_execute_nothing() {
        let marker = unique_marker("dry");
        let mut spec = grants(&["sh"]);
        spec.write = vec![".".into()];
        spec.signal = vec![marker.clone()];
        let (dir, env) = test_env(spec, Mode::DryRun);
        let out = run(&env, command("sh", &["-c", "touch ran"])).unwrap();
        assert!(out.simulated);
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(
            spawn(&env, command("sh", &["-c", "touch spawned"]), "logs/d.log").unwrap(),
            0
        );
        let mut child = looping_child(&marker);
        let pid = child.id();
        eventually("the child to start", || matching_pids(&marker) == vec![pid]);
        signal(&env, pid, SignalKind::Kill).unwrap();
        assert!(!stop(&env, pid, 10).unwrap());
        assert_eq!(stop_matching(&env, &marker, 10).unwrap(), 1);
        std::thread::sleep(Duration::from_millis(100));
        let still_alive = alive(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(still_alive);
        assert!(!dir.path().join("ran").exists());
        assert!(!dir.path().join("spawned").exists());
        assert!(!dir.path().join("logs").exists());
        let actions = env.take_actions();
        assert_eq!(actions.len(), 5);
        assert!(actions.iter().all(|a| !a.executed));
        assert!(
            actions[2]
                .what
                .starts_with(&format!("send KILL to pid {pid} (sh -c"))
        );
        assert!(
            actions[4].what.contains(&format!("pids [{pid}]")),
            "{}",
            actions[4].what
        );
    }

    #[test]
    fn calls_are_refused_without_grants() {
        let (_dir, env) = test_env(grants(&["sh"]), Mode::Execute);
        fn denied(r: Result<(), Error>) -> String {
            match r {
                Err(Error::Denied(d)) => d.capability,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(denied(run(&env, command("ls", &[])).map(drop)), "exec");
        let mut cmd = command("sh", &["-c", "true"]);
        cmd.cwd = Some("/".into());
        assert_eq!(denied(run(&env, cmd).map(drop)), "read");
        assert_eq!(
            denied(spawn(&env, command("sh", &[]), "d.log").map(drop)),
            "write"
        );
        assert_eq!(denied(env_var(&env, "HOME").map(drop)), "env");
        assert_eq!(
            denied(stop_matching(&env, "some-daemon", 10).map(drop)),
            "signal"
        );
        let marker = unique_marker("denied");
        let mut child = looping_child(&marker);
        let pid = child.id();
        eventually("the child to start", || {
            cmdline(pid).is_some_and(|c| c.contains(&marker))
        });
        let r = signal(&env, child.id(), SignalKind::Term);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(denied(r), "signal");
        let parent = std::os::unix::process::parent_id();
        assert!(matches!(
            signal(&env, parent, SignalKind::Term),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            stop_matching(&env, "", 10),
            Err(Error::Invalid(_))
        ));
        assert!(env.take_actions().is_empty());
    }

    #[test]
    fn spawn_detaches_logs_and_is_reaped_after_stop() {
        let mut spec = grants(&["sh"]);
        spec.write = vec!["logs".into()];
        spec.child_env = vec!["F*".into()];
        let (dir, env) = test_env(spec, Mode::Execute);
        let mut cmd = command("sh", &["-c", "echo started $FOO; exec sleep 30"]);
        cmd.env = vec![("FOO".into(), "x".into())];
        let pid = spawn(&env, cmd, "logs/daemon.log").unwrap();
        assert!(pid > 0);
        let npid = Pid::from_raw(pid as i32);
        assert_eq!(
            nix::unistd::getpgid(Some(npid)).unwrap(),
            npid,
            "own process group"
        );
        let log = dir.path().join("logs/daemon.log");
        eventually("the log line", || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("started x"))
        });
        assert!(!stop(&env, pid, 2000).unwrap());
        eventually("the daemon to be reaped", || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        // It is gone now: stopping it again is an error.
        match stop(&env, pid, 10) {
            Err(Error::Failed(m)) => assert!(m.contains(&format!("no process with pid {pid}"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stop_kills_what_ignores_term() {
        let mut spec = grants(&["sh"]);
        spec.write = vec![".".into()];
        let (dir, env) = test_env(spec, Mode::Execute);
        let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
        let pid = spawn(&env, command("sh", &["-c", script]), "stubborn.log").unwrap();
        let log = dir.path().join("stubborn.log");
        eventually("the trap", || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"))
        });
        let start = Instant::now();
        assert!(stop(&env, pid, 200).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(!alive(pid));
    }

    #[test]
    fn signal_reaches_a_spawned_process() {
        let mut spec = grants(&["sh"]);
        spec.write = vec![".".into()];
        let (_dir, env) = test_env(spec, Mode::Execute);
        let pid = spawn(&env, command("sh", &["-c", "exec sleep 30"]), "s.log").unwrap();
        signal(&env, pid, SignalKind::Kill).unwrap();
        eventually("the process to die", || !alive(pid));
    }

    #[test]
    fn stop_matching_stops_every_match() {
        let marker = unique_marker("match");
        let spec = GrantsSpec {
            signal: vec![marker.clone()],
            ..Default::default()
        };
        let (_dir, env) = test_env(spec, Mode::Execute);
        let mut children = [looping_child(&marker), looping_child(&marker)];
        eventually("the children to start", || {
            matching_pids(&marker).len() == 2
        });
        assert_eq!(stop_matching(&env, &marker, 2000).unwrap(), 2);
        for c in &mut children {
            assert_eq!(c.wait().unwrap().signal(), Some(NixSignal::SIGTERM as i32));
        }
        assert_eq!(
            stop_matching(&env, &format!("{marker} longer"), 10).unwrap(),
            0
        );
    }

    #[test]
    fn stop_refuses_a_pid_that_does_not_exist() {
        let spec = GrantsSpec {
            signal: vec!["anything".into()],
            ..Default::default()
        };
        let (_dir, env) = test_env(spec, Mode::Execute);
        let mut child = StdCommand::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        match stop(&env, pid, 10) {
            Err(Error::Failed(m)) => {
                assert!(m.contains(&format!("no process with pid {pid}")), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_reads_only_granted_variables() {
        let spec = GrantsSpec {
            env: vec!["PATH".into()],
            ..Default::default()
        };
        let (_dir, env) = test_env(spec, Mode::DryRun);
        assert_eq!(env_var(&env, "PATH").unwrap(), std::env::var("PATH").ok());
        assert!(matches!(env_var(&env, "HOME"), Err(Error::Denied(_))));
    }

    #[test]
    fn loader_and_interpreter_variables_are_never_passed() {
        let mut spec = grants(&["sh"]);
        spec.write = vec![".".into()];
        spec.child_env = vec!["*".into()];
        let (dir, env) = test_env(spec, Mode::Execute);
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "ld_audit",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "MALLOC_CHECK_",
            "BASH_ENV",
            "ENV",
            "PATH",
            "HOME",
            "PYTHONPATH",
            "PERL5OPT",
            "NODE_OPTIONS",
            "npm_config_script_shell",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_COUNT",
            "BASH_FUNC_echo%%",
        ] {
            let mut cmd = command("sh", &["-c", "touch ran"]);
            cmd.env = vec![(name.into(), "x".into())];
            match run(&env, cmd.clone()) {
                Err(Error::Invalid(m)) => {
                    assert!(m.contains(&format!("{name} is never passed")), "{m}");
                    assert!(m.contains("no grant allows it"), "{m}");
                }
                other => panic!("{name}: {other:?}"),
            }
            assert!(matches!(spawn(&env, cmd, "s.log"), Err(Error::Invalid(_))));
        }
        assert!(!dir.path().join("ran").exists());
        assert!(!dir.path().join("s.log").exists());
        assert!(env.take_actions().is_empty(), "nothing was run");
        // Harmless names pass under the wildcard grant.
        let mut cmd = command("sh", &["-c", "echo \"$NODE_ENV $GIT_TERMINAL_PROMPT\""]);
        cmd.env = vec![
            ("NODE_ENV".into(), "production".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ];
        assert_eq!(run(&env, cmd).unwrap().stdout, "production 0\n");
    }

    #[test]
    fn command_variables_need_a_child_env_grant() {
        let mut spec = grants(&["sh"]);
        spec.child_env = vec!["PG*".into(), "FOO".into()];
        let (_dir, env) = test_env(spec, Mode::DryRun);
        let with = |k: &str| {
            let mut cmd = command("sh", &["-c", "true"]);
            cmd.env = vec![(k.into(), "v".into())];
            run(&env, cmd)
        };
        assert!(with("PGPASSWORD").is_ok());
        assert!(with("FOO").is_ok());
        match with("FOOBAR") {
            Err(Error::Denied(d)) => {
                assert_eq!(d.capability, "child_env");
                assert_eq!(d.resource, "FOOBAR");
                assert!(d.hint.contains("child_env = [\"FOOBAR\"]"), "{}", d.hint);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grants_of_forbidden_names_and_general_purpose_programs() {
        assert!(bad_child_env_grant("LD_PRELOAD").is_some_and(|m| m.contains("never passed")));
        assert!(bad_child_env_grant("PGPASSWORD").is_none());
        assert!(
            bad_child_env_grant("LD_*").is_none(),
            "patterns are checked per call"
        );
        assert!(bad_child_env_grant("A*B").is_some());
        assert!(bad_child_env_grant("").is_some());
        for p in [
            "sh",
            "/bin/bash",
            "python3",
            "python3.12",
            "/usr/bin/env",
            "busybox",
            "node18",
        ] {
            assert!(general_purpose_program(p).is_some(), "{p}");
        }
        for p in ["/bin/echo", "git", "pg_dump", "systemctl", "tar"] {
            assert!(general_purpose_program(p).is_none(), "{p}");
        }
    }
}
