//! Running programs and controlling processes (the WIT `process`
//! interface). Every call has side effects: in dry runs the host records
//! "would ..." and executes nothing (outputs come back `simulated`).
//!
//! ```no_run
//! use rewind_sdk::Cmd;
//! # fn f() -> rewind_sdk::Result<()> {
//! let out = Cmd::new("git")
//!     .args(["reset", "--hard", "v1.0.0"])
//!     .cwd("/srv/app")
//!     .env("GIT_TERMINAL_PROMPT", "0")
//!     .timeout_ms(30_000)
//!     .run()?;
//! if !out.success() {
//!     rewind_sdk::bail!("git reset failed: {}", out.stderr.trim());
//! }
//! # Ok(()) }
//! ```

use crate::Error;
pub use crate::bindings::rewind::plugin::process::*;

/// The SDK's name for the WIT `command` record, built like
/// `std::process::Command`.
pub type Cmd = Command;

impl Command {
    /// Run `program` (a granted name looked up in PATH, or a path).
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            stdin: None,
            timeout_ms: 0,
        }
    }
    /// Add one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Working directory (must be readable).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Set an environment variable for the child. The runbook must grant
    /// its name in `child_env`; loader and interpreter variables (`LD_*`,
    /// `BASH_ENV`, `PYTHONPATH`, `PATH`, `HOME` ...) are always refused.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Text fed to the child's standard input.
    pub fn stdin(mut self, text: impl Into<String>) -> Self {
        self.stdin = Some(text.into());
        self
    }
    /// Kill the child (and its process group) after this long; 60 s when 0.
    pub fn timeout_ms(mut self, ms: Millis) -> Self {
        self.timeout_ms = ms;
        self
    }
    /// Run to completion; a non-zero exit is a value, see [`Output::success`].
    pub fn run(&self) -> Result<Output, Error> {
        run(self)
    }
    /// Start as a detached daemon, output appended to `log_path`; its pid
    /// (0 in dry runs).
    pub fn spawn(&self, log_path: &str) -> Result<u32, Error> {
        spawn(self, log_path)
    }
    /// The command line as one string, for step details and logs.
    /// Run it and say how it went in one line: `Ok(what it said)` for exit
    /// 0 (or a dry run), `Err(why)` naming `what`, the command, its exit and
    /// its output otherwise. A call that could not run at all is the outer
    /// error.
    pub fn run_ok(&self, what: &str) -> Result<std::result::Result<String, String>, Error> {
        use crate::text::one_line;
        let out = self.run()?;
        if out.simulated {
            return Ok(Ok(format!("would run `{}`", self.display())));
        }
        if out.exit_code == Some(0) {
            let said = one_line(&out.stdout, 160);
            return Ok(Ok(if said.is_empty() {
                format!("`{}` ok", self.display())
            } else {
                format!("`{}`: {said}", self.display())
            }));
        }
        let code = out
            .exit_code
            .map_or("was killed by a signal".to_string(), |c| {
                format!("exited {c}")
            });
        Ok(Err(format!(
            "{what}: `{}` {code}: {}",
            self.display(),
            one_line(&format!("{} {}", out.stderr, out.stdout), 300)
        )))
    }

    pub fn display(&self) -> String {
        let mut s = quote(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Output {
    /// Exited with code 0, or was simulated (dry run).
    pub fn success(&self) -> bool {
        self.simulated || self.exit_code == Some(0)
    }
}
