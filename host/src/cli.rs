//! The command line: parsing, output for people and for machines, and the
//! read-only commands (`check`, `history`, `show`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::bindings::types::Mode;
use crate::run::{
    self, FindingReport, RunOptions, RunReport, StepStatus, exit, fmt_duration, format_finding,
};
use crate::runbook::Runbook;
use crate::runtime::{Runtime, default_cache_dir};
use crate::sandbox::Capability;
use crate::state::StateDir;

const EXIT_CODES: &str = "Exit codes:
  0  rolled back and verified, nothing to do, or the check passed
  1  the rollback ran but a step or the verification failed
  2  bad command line or runbook
  3  a plugin could not be loaded, or lacks grants it needs (nothing was touched)
  4  another run holds the state directory's lock, or the lock of a service it rolls back
  5  run, drill, resume: stopped by SIGINT/SIGTERM between steps (resumable)
  6  run, drill, resume: stopped at once by a second SIGINT/SIGTERM (the step's commands were killed; resumable)
  7  run: the last run was interrupted: `rewind resume` it, or `rewind run --fresh`";

#[derive(Debug, Parser)]
#[command(name = "rewind", version, about = "Run rollback runbooks compiled to sandboxed WebAssembly plugins", after_help = EXIT_CODES)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of the summary.
    #[arg(long, global = true)]
    json: bool,
    /// Only print the summary (no progress lines).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Where compiled plugins are cached [default: $REWIND_CACHE_DIR, else $XDG_CACHE_HOME/rewind, else ~/.cache/rewind].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// When to colour help and usage errors (`auto`: on a terminal, unless
    /// NO_COLOR is set). rewind's own output is never styled.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse the runbook, load and link every plugin, and compare what each
    /// plugin needs with what it is granted. Executes nothing.
    #[command(
        after_help = "Examples:\n  rewind check /etc/rewind/shop.toml\n  rewind --json check | jq .ok"
    )]
    Check {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
    },
    /// Compile every plugin of the runbook into the compiled-code cache
    /// (in parallel), so that no incident pays for compiling: run it at
    /// install time, after each plugin upgrade. Executes nothing.
    #[command(
        after_help = "Examples:\n  rewind compile /etc/rewind/shop.toml   # after installing or upgrading a plugin"
    )]
    Compile {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
    },
    /// Assess the system and print each plugin's plan. Executes nothing.
    #[command(
        after_help = "Examples:\n  rewind plan /etc/rewind/shop.toml\n  rewind plan --level 2 --plugin db"
    )]
    Plan {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Plan this level instead of the assessed one.
        #[arg(long)]
        level: Option<u8>,
    },
    /// Roll back: assess, plan, run the steps, verify, escalate if needed.
    #[command(
        after_help = "Examples:\n  rewind run --dry-run /etc/rewind/shop.toml   # what it would do, nothing executed\n  rewind run /etc/rewind/shop.toml\n  rewind run --approve destructive --junit report.xml   # scripted: no person to ask"
    )]
    Run {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Record what would be done; the host executes no side effect.
        #[arg(long)]
        dry_run: bool,
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Run this level (even if the assessment says healthy).
        #[arg(long)]
        level: Option<u8>,
        /// Treat manual steps as already done by a person (no prompt).
        #[arg(long)]
        approve_manual: bool,
        /// Start a new run even though the last one was interrupted
        /// (instead of `rewind resume`).
        #[arg(long)]
        fresh: bool,
        /// Forget the decisions pinned for the incident (the target
        /// release, the backup to restore) and let the plugins decide again.
        #[arg(long)]
        redecide: bool,
        /// Approve up front what the runbook's [policy] would ask a person
        /// for: an effect (`destructive`: every step up to it), a level
        /// number, or a step id. Repeatable.
        #[arg(long, value_name = "EFFECT|LEVEL|STEP")]
        approve: Vec<String>,
        /// Also write the report as JUnit XML to FILE (one test case per
        /// step and per verification), for CI and incident tools.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Carry on an interrupted run (the last one, or RUN_ID) under its own
    /// id: completed steps are not run again; the step that was in flight
    /// runs again only if its plugin marks it safe to repeat.
    #[command(
        after_help = "Examples:\n  rewind resume                       # the last run, if it was interrupted\n  rewind resume 20261202T0301 --in-flight done"
    )]
    Resume {
        /// `[RUN_ID] [RUNBOOK]`, in either order: the run (a unique prefix
        /// of its id; default: the last run, if it was interrupted) and the
        /// runbook (default `rewind.toml`; an argument that names an
        /// existing file is the runbook).
        #[arg(num_args = 0..=2, value_name = "RUN_ID|RUNBOOK")]
        args: Vec<String>,
        /// Resume even though the runbook, a plugin's config or a
        /// component changed since the run started.
        #[arg(long)]
        force: bool,
        /// The step that was in flight, when it is not marked safe to
        /// repeat: ask (on a terminal), `done` (a person checked it
        /// completed) or `redo` (run it again).
        #[arg(long, value_enum, default_value = "ask")]
        in_flight: run::InFlight,
        /// Treat manual steps as already done by a person (no prompt).
        #[arg(long)]
        approve_manual: bool,
        /// As `rewind run --approve`.
        #[arg(long, value_name = "EFFECT|LEVEL|STEP")]
        approve: Vec<String>,
        /// Also write the report as JUnit XML to FILE (one test case per
        /// step and per verification), for CI and incident tools.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Approve the step (or escalation) a run is waiting on, from another
    /// shell: `[RUN_ID] [RUNBOOK]`, as for resume.
    #[command(
        after_help = "Examples:\n  rewind approve                      # the one run waiting in ./rewind.toml's state dir\n  rewind approve 20261202T0301 /etc/rewind/shop.toml --step restore-db"
    )]
    Approve {
        #[arg(num_args = 0..=2, value_name = "RUN_ID|RUNBOOK")]
        args: Vec<String>,
        /// Only if the run waits on this step (its id, or escalate-to-N).
        #[arg(long)]
        step: Option<String>,
    },
    /// Refuse the step (or escalation) a run is waiting on: the run stops
    /// there and ends, the services left as they are.
    #[command(after_help = "Examples:\n  rewind deny 20261202T0301 /etc/rewind/shop.toml")]
    Deny {
        #[arg(num_args = 0..=2, value_name = "RUN_ID|RUNBOOK")]
        args: Vec<String>,
        #[arg(long)]
        step: Option<String>,
    },
    /// List the snapshots the runbook's plugins took (newest first): what
    /// `rewind restore` can put back.
    #[command(after_help = "Examples:\n  rewind snapshots /etc/rewind/shop.toml")]
    Snapshots {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Put back the files a snapshot holds (its id, or a unique prefix):
    /// shows what would change, asks as [policy] says for a destructive
    /// step, saves the live files first (so the restore can be undone),
    /// and checks the result against the snapshot.
    #[command(
        after_help = "Examples:\n  rewind restore aivillage-pre-rollback-2026 --dry-run\n  rewind restore aivillage-pre-rollback-2026 /etc/rewind/shop.toml"
    )]
    Restore {
        snapshot: String,
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Approve up front (`destructive`, or the snapshot id).
        #[arg(long, value_name = "EFFECT|SNAPSHOT")]
        approve: Vec<String>,
    },
    /// What rewind is doing for the runbook now: a run (its step), a run
    /// waiting for a person, a watch (its last round), an interrupted run
    /// to resume, and the last run's outcome. Takes no lock.
    #[command(
        after_help = "Examples:\n  rewind status /etc/rewind/shop.toml\n  rewind --json status | jq -r .state"
    )]
    Status {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
    },
    /// List past runs from the journal.
    #[command(
        after_help = "Examples:\n  rewind history /etc/rewind/shop.toml\n  rewind history --state-dir /var/lib/rewind/shop"
    )]
    History {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Read this state directory instead of the runbook's.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Show one run's timeline (a unique prefix of the run id is enough).
    #[command(
        after_help = "Examples:\n  rewind show 20261202T0301\n  rewind --json show 20261202T0301 | jq -c 'select(.event == \"action\")'"
    )]
    Show {
        run_id: String,
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Rehearse a rollback: break the system as a [[drill]] says, time
    /// detect, decide, act and verify, and compare with the RTO.
    #[command(
        after_help = "Examples:\n  rewind drill --scenario bad-deploy\n  rewind drill --reload --junit drills.xml"
    )]
    Drill {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Only this scenario (default: all of them, in order).
        #[arg(long)]
        scenario: Option<String>,
        /// Swap in a plugin file that changes during the drill (between steps).
        #[arg(long)]
        reload: bool,
        /// Treat manual steps as done by a person.
        #[arg(long)]
        approve_manual: bool,
        /// As `rewind run --approve`.
        #[arg(long, value_name = "EFFECT|LEVEL|STEP")]
        approve: Vec<String>,
        /// Also write the drill reports as JUnit XML to FILE: a suite per
        /// scenario, whose result is the drill's verdict against its RTO.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// List past drills with their recovery times against the RTO.
    #[command(after_help = "Examples:\n  rewind drills /etc/rewind/shop.toml")]
    Drills {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Probe on an interval ([watch] in the runbook) and roll back after N
    /// consecutive failures; never twice until the service was healthy again.
    #[command(
        after_help = "Examples:\n  rewind watch /etc/rewind/shop.toml   # under systemd: see docs/operations.md\n  rewind watch --max-rounds 1 --json"
    )]
    Watch {
        #[arg(default_value = "rewind.toml")]
        runbook: PathBuf,
        /// Stop after this many probe rounds.
        #[arg(long)]
        max_rounds: Option<u64>,
        /// Treat manual steps as done by a person.
        #[arg(long)]
        approve_manual: bool,
        /// As `rewind run --approve`, for every rollback watch starts:
        /// what it may do with nobody asked.
        #[arg(long, value_name = "EFFECT|LEVEL|STEP")]
        approve: Vec<String>,
    },
    /// Print a shell completion script for rewind.
    #[command(
        after_help = "Examples:\n  rewind completions bash > /etc/bash_completion.d/rewind\n  rewind completions zsh > \"${fpath[1]}/_rewind\"\n  rewind completions fish > ~/.config/fish/completions/rewind.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR.
    #[command(
        after_help = "Examples:\n  rewind man | man -l -\n  rewind man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write rewind.1 and rewind-COMMAND.1 here instead of printing rewind.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    // `--color` decides how clap styles help and usage errors (rewind's
    // own output has no styling), so it is read before clap parses.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let color = color_choice(&args);
    let parsed = <Cli as clap::CommandFactory>::command()
        .color(color)
        .try_get_matches_from(&args)
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(cli.json || cli.quiet);
    match dispatch(&cli) {
        Ok(code) => code,
        Err((code, msg)) => {
            crate::errln!("error: {msg}");
            code
        }
    }
}

/// `--color auto|always|never` (or `--color=...`) from the raw arguments;
/// `auto` (the default) colours a terminal unless `NO_COLOR` is set.
fn color_choice(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    let mut it = args.iter().map(|a| a.to_string_lossy());
    let mut value = None;
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--color" {
            value = it.next().map(|v| v.to_string());
        } else if let Some(v) = a.strip_prefix("--color=") {
            value = Some(v.to_string());
        }
    }
    match value.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}

fn init_tracing(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Through the output boundary: secrets masked, and control
        // characters from plugin messages escaped. rewind's own lines need
        // no colours, so there are no escape sequences of ours to keep.
        .with_writer(crate::redact::Stderr)
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        .without_time()
        .try_init();
}

type CliResult = Result<i32, (i32, String)>;

fn dispatch(cli: &Cli) -> CliResult {
    match &cli.command {
        Command::Check { runbook } => check(cli, runbook),
        Command::Compile { runbook } => compile(cli, runbook),
        Command::Plan {
            runbook,
            plugin,
            level,
        } => {
            let opts = RunOptions {
                mode: Mode::DryRun,
                plugin: plugin.clone(),
                level: *level,
                plan_only: true,
                live: !cli.quiet && !cli.json,
                ..RunOptions::default()
            };
            run_cmd(cli, runbook, &opts, None)
        }
        Command::Run {
            runbook,
            dry_run,
            plugin,
            level,
            approve_manual,
            fresh,
            redecide,
            approve,
            junit,
        } => {
            let opts = RunOptions {
                mode: if *dry_run {
                    Mode::DryRun
                } else {
                    Mode::Execute
                },
                plugin: plugin.clone(),
                level: *level,
                approve_manual: *approve_manual,
                live: !cli.quiet && !cli.json,
                fresh: *fresh,
                redecide: *redecide,
                approve: pre_approvals(approve),
                ..RunOptions::default()
            };
            run_cmd(cli, runbook, &opts, junit.as_deref())
        }
        Command::Resume {
            args,
            force,
            in_flight,
            approve_manual,
            approve,
            junit,
        } => {
            let opts = RunOptions {
                approve_manual: *approve_manual,
                live: !cli.quiet && !cli.json,
                in_flight: *in_flight,
                approve: pre_approvals(approve),
                ..RunOptions::default()
            };
            let (runbook, run_id) = resume_args(args)?;
            resume_cmd(
                cli,
                &runbook,
                run_id.as_deref(),
                *force,
                &opts,
                junit.as_deref(),
            )
        }
        Command::Approve { args, step } => answer_cmd(args, step.as_deref(), true),
        Command::Deny { args, step } => answer_cmd(args, step.as_deref(), false),
        Command::Snapshots { runbook, plugin } => snapshots_cmd(cli, runbook, plugin.as_deref()),
        Command::Restore {
            snapshot,
            runbook,
            dry_run,
            approve,
        } => restore_cmd(
            cli,
            runbook,
            &crate::restore::RestoreOptions {
                id: snapshot.clone(),
                mode: if *dry_run {
                    Mode::DryRun
                } else {
                    Mode::Execute
                },
                approve: pre_approvals(approve),
                live: !cli.quiet && !cli.json,
            },
        ),
        Command::Status { runbook } => status_cmd(cli, runbook),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "rewind", &mut out);
            print_raw(&out)
        }
        Command::Man { dir } => man_cmd(dir.as_deref()),
        Command::History { runbook, state_dir } => {
            history(cli, &state_for(cli, runbook, state_dir.as_deref())?)
        }
        Command::Show {
            run_id,
            runbook,
            state_dir,
        } => show(cli, &state_for(cli, runbook, state_dir.as_deref())?, run_id),
        Command::Drill {
            runbook,
            scenario,
            reload,
            approve_manual,
            approve,
            junit,
        } => drill_cmd(
            cli,
            runbook,
            junit.as_deref(),
            &crate::drill::DrillOptions {
                scenario: scenario.clone(),
                reload: *reload,
                approve_manual: *approve_manual,
                approve: pre_approvals(approve),
                live: !cli.quiet && !cli.json,
            },
        ),
        Command::Drills { runbook, state_dir } => {
            drills_cmd(cli, &state_for(cli, runbook, state_dir.as_deref())?)
        }
        Command::Watch {
            runbook,
            max_rounds,
            approve_manual,
            approve,
        } => {
            let runbook = load_runbook(cli, runbook)?;
            let rt = std::sync::Arc::new(runtime(cli, &runbook)?);
            let opts = crate::watch::WatchOptions {
                json: cli.json,
                max_rounds: *max_rounds,
                approve_manual: *approve_manual,
                approve: pre_approvals(approve),
            };
            crate::watch::watch(&runbook, &rt, &opts).map_err(|e| (e.exit_code(), e.to_string()))
        }
    }
}

/// Load and validate a runbook. A `--cache-dir` is protected like the
/// default cache: a grant that reaches it makes the runbook unusable.
fn load_runbook(cli: &Cli, path: &Path) -> Result<Runbook, (i32, String)> {
    let usage = |e: crate::runbook::RunbookError| (exit::USAGE, e.to_string());
    let mut runbook = Runbook::load(path).map_err(usage)?;
    if let Some(dir) = &cli.cache_dir {
        runbook
            .protect(dir, "rewind's compiled-code cache")
            .map_err(usage)?;
    }
    Ok(runbook)
}

fn runtime(cli: &Cli, runbook: &Runbook) -> Result<Runtime, (i32, String)> {
    let cache = cli
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .or_else(|| Some(runbook.state_dir.join("cache")));
    Runtime::new(runbook.limits, cache).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot start the WebAssembly engine: {e:#}"),
        )
    })
}

fn state_for(
    cli: &Cli,
    runbook: &Path,
    state_dir: Option<&Path>,
) -> Result<StateDir, (i32, String)> {
    match state_dir {
        Some(d) => Ok(StateDir::new(d)),
        None => Ok(load_runbook(cli, runbook)?.state()),
    }
}

fn run_cmd(cli: &Cli, path: &Path, opts: &RunOptions, junit: Option<&Path>) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let rt = runtime(cli, &runbook)?;
    if !opts.plan_only {
        handle_signals()?;
    }
    let report = run::execute(&runbook, &rt, opts).map_err(|e| (e.exit_code(), e.to_string()))?;
    finish_run(cli, &report, opts.plan_only, junit)
}

/// SIGINT/SIGTERM stop a run between steps (see `run::stop_on_signals`).
fn handle_signals() -> Result<(), (i32, String)> {
    run::stop_on_signals().map_err(|e| (exit::FAILED, format!("cannot handle signals: {e}")))
}

fn finish_run(cli: &Cli, report: &RunReport, plan_only: bool, junit: Option<&Path>) -> CliResult {
    // The JUnit file is written before anything is printed: a reader that
    // closed stdout must not cost the CI its report. Failing to write it
    // is said, and changes nothing of what the run did or its exit code.
    if let Some(path) = junit
        && let Err(e) = crate::junit::write(&crate::junit::run_report(report), path)
    {
        crate::errln!("error: {e}");
    }
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(report, true));
    } else {
        print_report(report, plan_only);
    }
    if run::stop_requested() {
        return Ok(exit::INTERRUPTED);
    }
    Ok(report.exit_code())
}

fn pre_approvals(list: &[String]) -> Vec<crate::policy::PreApproval> {
    list.iter()
        .map(|a| crate::policy::PreApproval::parse(a))
        .collect()
}

/// Bytes for stdout as they are (a script, a man page): a reader that
/// closed the pipe ends it quietly.
fn print_raw(bytes: &[u8]) -> CliResult {
    use std::io::Write as _;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err((exit::FAILED, format!("cannot write to stdout: {e}")))
        }
        _ => Ok(exit::OK),
    }
}

fn man_cmd(dir: Option<&Path>) -> CliResult {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| (exit::FAILED, format!("cannot render the man page: {e}")))?;
        return print_raw(&out);
    };
    let failed = |e: std::io::Error| {
        (
            exit::FAILED,
            format!("cannot write man pages into {}: {e}", dir.display()),
        )
    };
    clap_mangen::generate_to(cmd, dir).map_err(failed)?;
    Ok(exit::OK)
}

fn status_cmd(cli: &Cli, path: &Path) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let state = runbook.state();
    let s = crate::status::read(&runbook.name, &state).map_err(|e| {
        (
            exit::FAILED,
            format!(
                "cannot read the state directory {}: {e}",
                state.path().display()
            ),
        )
    })?;
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&s, true));
    } else {
        crate::redact::stdout_text(&crate::status::text(&s));
    }
    Ok(exit::OK)
}

fn snapshots_cmd(cli: &Cli, path: &Path, plugin: Option<&str>) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let list =
        crate::restore::list(&runbook, plugin).map_err(|e| (e.exit_code(), e.to_string()))?;
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&list, true));
        return Ok(exit::OK);
    }
    if list.is_empty() {
        crate::outln!(
            "no snapshots yet in {}",
            runbook.state().path().join("snapshots").display()
        );
        return Ok(exit::OK);
    }
    crate::outln!(
        "{:<44} {:<14} {:<20} {:<32} {:>6} {:>10}  PATHS",
        "SNAPSHOT",
        "PLUGIN",
        "TAKEN",
        "RUN",
        "FILES",
        "BYTES"
    );
    for f in &list {
        let m = &f.manifest;
        crate::outln!(
            "{:<44} {:<14} {:<20} {:<32} {:>6} {:>10}  {}",
            m.id,
            f.plugin,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(m.created_ms)
            )
            .to_string(),
            if m.run.is_empty() {
                "-"
            } else {
                m.run.as_str()
            },
            m.files.len(),
            m.bytes,
            m.paths.join(", ")
        );
    }
    Ok(exit::OK)
}

fn restore_cmd(cli: &Cli, path: &Path, opts: &crate::restore::RestoreOptions) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let rt = runtime(cli, &runbook)?;
    let report =
        crate::restore::restore(&runbook, &rt, opts).map_err(|e| (e.exit_code(), e.to_string()))?;
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&report, true));
    } else if let Some(e) = &report.error {
        crate::errln!("error: {e}");
    }
    Ok(report.exit_code())
}

/// `rewind approve` / `rewind deny`: answer the gate a run waits on. Only a
/// run that is waiting gets an answer, and the answer names the gate, so
/// an approval given late never approves a later step.
fn answer_cmd(args: &[String], step: Option<&str>, approve: bool) -> CliResult {
    let (path, id) = resume_args(args)?;
    let runbook = Runbook::load(&path).map_err(|e| (exit::USAGE, e.to_string()))?;
    let state = runbook.state();
    let dir = crate::policy::approvals_dir(&state);
    let mut waiting: Vec<(String, String)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let run = name.strip_suffix(".waiting")?.to_string();
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    Some((run, text))
                })
                .collect()
        })
        .unwrap_or_default();
    waiting.retain(|(run, _)| id.as_deref().is_none_or(|id| run.starts_with(id)));
    let (run, text) = match waiting.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err((
                exit::USAGE,
                format!(
                    "no run{} is waiting for an approval in {}",
                    id.map(|i| format!(" {i:?}")).unwrap_or_default(),
                    state.path().display()
                ),
            ));
        }
        many => {
            return Err((
                exit::USAGE,
                format!(
                    "{} runs wait for an approval ({}); name one",
                    many.len(),
                    many.iter()
                        .map(|(r, _)| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let (gate, what) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    let gate = gate.trim();
    if let Some(step) = step
        && step != gate
    {
        return Err((
            exit::USAGE,
            format!("run {run} waits on {gate:?}, not {step:?}: {}", what.trim()),
        ));
    }
    let who = crate::policy::Who::me();
    let answer = crate::policy::Answer {
        approve,
        step: Some(gate.to_string()),
        who: who.clone(),
        ts: crate::journal::now_rfc3339(),
        note: None,
    };
    crate::policy::answer(&state, &run, &answer).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot write the answer in {}: {e}", dir.display()),
        )
    })?;
    crate::outln!(
        "{} {gate} of run {run} as {who}: {}",
        if approve { "approved" } else { "denied" },
        what.trim()
    );
    Ok(exit::OK)
}

/// `resume`'s positional arguments: the one naming an existing file is the
/// runbook, the other the run id.
fn resume_args(args: &[String]) -> Result<(PathBuf, Option<String>), (i32, String)> {
    let (files, ids): (Vec<&String>, Vec<&String>) =
        args.iter().partition(|a| Path::new(a.as_str()).is_file());
    match (files.as_slice(), ids.as_slice()) {
        ([], []) => Ok((PathBuf::from("rewind.toml"), None)),
        ([f], []) => Ok((PathBuf::from(f.as_str()), None)),
        ([], [id]) => Ok((PathBuf::from("rewind.toml"), Some(id.to_string()))),
        ([f], [id]) => Ok((PathBuf::from(f.as_str()), Some(id.to_string()))),
        _ => Err((
            exit::USAGE,
            format!(
                "resume takes a run id and a runbook file, not {}",
                args.iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

fn resume_cmd(
    cli: &Cli,
    path: &Path,
    id: Option<&str>,
    force: bool,
    opts: &RunOptions,
    junit: Option<&Path>,
) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let state = runbook.state();
    let read_err = |e: std::io::Error| {
        (
            exit::FAILED,
            format!("cannot read {}: {e}", state.runs().display()),
        )
    };
    let run = match id {
        Some(id) => {
            let runs = list_runs(&state).map_err(read_err)?;
            let (_, path) = one_run(&state, &runs, id)?;
            crate::resume::Interrupted::read(path)
                .map_err(read_err)?
                .ok_or_else(|| {
                    (
                        exit::USAGE,
                        format!("{} has no run start: not a run journal", path.display()),
                    )
                })?
        }
        None => {
            let _lock = crate::lock::RunLock::acquire(&state, "looking for an interrupted run")
                .map_err(|e| (e.exit_code(), e.to_string()))?;
            crate::resume::last_interrupted(&state)
                .map_err(read_err)?
                .ok_or_else(|| {
                    (
                        exit::USAGE,
                        format!(
                            "nothing to resume: the last run in {} was not interrupted (`rewind history` lists the runs)",
                            state.runs().display()
                        ),
                    )
                })?
        }
    };
    let rt = runtime(cli, &runbook)?;
    handle_signals()?;
    let report = run::resume(&runbook, &rt, opts, &run, force)
        .map_err(|e| (e.exit_code(), e.to_string()))?;
    finish_run(cli, &report, false, junit)
}

fn print_report(r: &RunReport, plan_only: bool) {
    let what = if plan_only { "plan" } else { "run" };
    crate::outln!();
    crate::outln!(
        "{what} {} of {:?} ({}): {} in {}",
        r.run_id,
        r.runbook,
        r.mode,
        r.outcome.as_str(),
        fmt_duration(Duration::from_millis(r.duration_ms))
    );
    for p in &r.plugins {
        crate::outln!(
            "  plugin {} [{}] -> {}",
            p.name,
            &p.sha256[..12.min(p.sha256.len())],
            p.outcome.as_str()
        );
        if let Some(a) = &p.assessment {
            crate::outln!(
                "    assessment: {} severity, scenario {:?}, rollback {}",
                a.severity,
                a.scenario,
                if a.rollback { "yes" } else { "no" }
            );
            print_findings(&a.findings);
        }
        for l in &p.levels {
            crate::outln!("    level {} ({}), effect {}:", l.level, l.name, l.effect);
            for s in &l.steps {
                let mark = match s.status {
                    StepStatus::Ok => "ok     ",
                    StepStatus::Failed => "FAILED ",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Planned => "-      ",
                };
                let manual = if s.manual { " [manual]" } else { "" };
                if plan_only {
                    let again = if s.repeatable { ", repeatable" } else { "" };
                    crate::outln!(
                        "      {mark} {}{manual} [{}{again}]: {}",
                        s.id,
                        s.effect,
                        s.title
                    );
                    crate::outln!("              {}", s.detail);
                    if !s.message.is_empty() {
                        crate::outln!("              ! {}", s.message);
                    }
                } else {
                    crate::outln!(
                        "      {mark} {:>8}  {}{manual}: {}",
                        fmt_duration(Duration::from_millis(s.duration_ms)),
                        s.id,
                        s.message
                    );
                }
                for a in &s.actions {
                    crate::outln!(
                        "              {} {}",
                        if a.executed { "did" } else { "would" },
                        a.what
                    );
                }
                print_findings_indent(&s.findings, "              ");
            }
            if let Some(v) = &l.verification {
                crate::outln!(
                    "      verify: {} ({})",
                    if v.healthy { "healthy" } else { "NOT healthy" },
                    v.summary
                );
                print_findings(&v.findings);
            }
        }
        if let Some(e) = &p.error {
            crate::outln!("    error: {e}");
        }
    }
    if let Some(j) = &r.journal {
        crate::outln!("  journal: {}", j.display());
    }
}

fn print_findings(f: &[FindingReport]) {
    print_findings_indent(f, "      ");
}

fn print_findings_indent(f: &[FindingReport], indent: &str) {
    for f in f {
        crate::outln!("{indent}{}", format_finding(f));
    }
}

/// Load (and so compile into the cache) every distinct component of the
/// runbook, one thread each: Cranelift's work is per component.
fn compile(cli: &Cli, path: &Path) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let rt = runtime(cli, &runbook)?;
    let mut components: Vec<&Path> = runbook
        .plugins
        .iter()
        .map(|p| p.component.as_path())
        .collect();
    components.sort();
    components.dedup();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = components
            .iter()
            .map(|c| {
                let rt = &rt;
                s.spawn(move || rt.load(c))
            })
            .collect();
        handles
            .into_iter()
            .zip(&components)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::runtime::LoadError::Invalid {
                        path: c.to_path_buf(),
                        reason: "the compiler panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut failed = Vec::new();
    let mut out = Vec::new();
    for (c, r) in components.iter().zip(results) {
        match r {
            Ok(p) => {
                if !cli.json {
                    crate::outln!(
                        "{}: {} in {} ({})",
                        c.display(),
                        if p.stats.compiled {
                            "compiled into the cache"
                        } else {
                            "already in the cache"
                        },
                        fmt_duration(p.stats.duration),
                        p.short_hash()
                    );
                }
                out.push(serde_json::json!({
                    "component": c, "sha256": p.sha256, "compiled": p.stats.compiled,
                    "ms": p.stats.duration.as_millis() as u64,
                }));
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if cli.json {
        crate::redact::stdout_line(&crate::redact::json_string(
            &serde_json::json!({"components": out, "errors": failed}),
            true,
        ));
    }
    if failed.is_empty() {
        Ok(exit::OK)
    } else {
        Err((exit::PLUGIN, failed.join("\n")))
    }
}

fn check(cli: &Cli, path: &Path) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let rt = runtime(cli, &runbook)?;
    let (_session, prepared) =
        run::Session::open(&runbook, &rt, run::Kind::Plan, Mode::Check, None)
            .map_err(|e| (e.exit_code(), e.to_string()))?;
    let mut missing_total = 0;
    let mut out = Vec::new();
    for p in &prepared {
        let needs = &p.info.needs;
        let lists: [(Capability, &Vec<String>); 8] = [
            (Capability::Http, &needs.http),
            (Capability::Tcp, &needs.tcp),
            (Capability::Exec, &needs.exec),
            (Capability::Signal, &needs.signal),
            (Capability::Read, &needs.read),
            (Capability::Write, &needs.write),
            (Capability::Sqlite, &needs.sqlite),
            (Capability::Env, &needs.env),
        ];
        let mut missing = Vec::new();
        for (cap, list) in lists {
            for need in list {
                if !p.env.sandbox.covers(cap, need) {
                    missing.push(format!(
                        "needs {cap} {need:?}, which is not granted: add {cap} = [{need:?}] under [plugin.grants] ({}:{})",
                        runbook.path.display(),
                        p.spec.grants_line
                    ));
                }
            }
        }
        missing_total += missing.len();
        // Grants that hand out arbitrary execution are legal (some
        // procedures need a shell) but worth a second look.
        let warnings: Vec<String> = p
            .env
            .sandbox
            .granted(Capability::Exec)
            .iter()
            .filter_map(|g| {
                crate::imports::process::general_purpose_program(g).map(|what| {
                    format!(
                        "warning: exec grant {g:?} ({what}) runs whatever its arguments say: the plugin can run any code as rewind's user; grant the specific programs instead if you can ({}:{})",
                        runbook.path.display(),
                        p.spec.grants_line
                    )
                })
            })
            .collect();
        let levels: Vec<String> = p
            .info
            .levels
            .iter()
            .map(|l| format!("{} {}", l.level, l.name))
            .collect();
        if !cli.json {
            crate::outln!(
                "{}: {} {} ({}), {} in {}, levels [{}]",
                p.spec.name,
                p.info.name,
                p.info.version,
                &p.plugin.sha256[..12],
                if p.plugin.stats.compiled {
                    "compiled"
                } else {
                    "loaded from cache"
                },
                fmt_duration(p.plugin.stats.duration),
                levels.join(", ")
            );
            if missing.is_empty() {
                crate::outln!("  grants cover everything it declares");
            }
            for w in &warnings {
                crate::outln!("  {w}");
            }
            for m in &missing {
                crate::outln!("  {m}");
            }
        }
        out.push(serde_json::json!({
            "plugin": p.spec.name, "name": p.info.name, "version": p.info.version, "sha256": p.plugin.sha256,
            "compiled": p.plugin.stats.compiled, "levels": levels, "missing": missing, "warnings": warnings,
        }));
    }
    if cli.json {
        crate::outln!(
            "{}",
            crate::redact::json_string(
                &serde_json::json!({"runbook": runbook.name, "ok": missing_total == 0, "plugins": out}),
                true
            )
        );
    } else if missing_total == 0 {
        crate::outln!(
            "ok: {} plugin(s) load, link and are granted what they need",
            prepared.len()
        );
    }
    if missing_total > 0 {
        return Err((
            exit::PLUGIN,
            format!("{missing_total} grant(s) missing; nothing was run"),
        ));
    }
    Ok(exit::OK)
}

/// One line per run, from its journal.
#[derive(Debug, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub started: String,
    pub runbook: String,
    pub mode: String,
    pub outcome: String,
    pub duration_ms: Option<u64>,
    pub plugins: Vec<String>,
}

/// The run id in the state dir's lock when the process it names is alive
/// (read, not tested by locking: a test lock taken by `history` could make
/// a run starting that instant think the state dir busy).
fn current_holder(state: &StateDir) -> Option<String> {
    let text = std::fs::read_to_string(state.lock_file()).ok()?;
    let holder = crate::lock::Holder::parse(&text)?;
    holder.alive().then_some(holder.run_id)
}

pub fn list_runs(state: &StateDir) -> std::io::Result<Vec<(RunSummary, PathBuf)>> {
    let dir = state.runs();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    // A journal without run-end is a run in progress while its process
    // holds the state dir's lock (the lock names it), and interrupted
    // otherwise.
    let running = current_holder(state);
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let events = crate::journal::read(&path)?;
        let Some(first) = events.first() else {
            continue;
        };
        let last = events.iter().rev().find(|e| e["event"] == "run-end");
        let plugins = events
            .iter()
            .filter(|e| e["event"] == "plugin-loaded")
            .filter_map(|e| e["plugin"].as_str().map(String::from))
            .collect();
        out.push((
            RunSummary {
                run_id: first["run"].as_str().unwrap_or_default().into(),
                started: first["ts"].as_str().unwrap_or_default().into(),
                runbook: first["name"].as_str().unwrap_or_default().into(),
                mode: first["mode"].as_str().unwrap_or_default().into(),
                outcome: match last.and_then(|e| e["outcome"].as_str()) {
                    Some(o) => o.into(),
                    None if running.is_some() && running.as_deref() == first["run"].as_str() => {
                        "running".into()
                    }
                    None => "interrupted".into(),
                },
                duration_ms: last.and_then(|e| e["duration_ms"].as_u64()),
                plugins,
            },
            path,
        ));
    }
    out.sort_by(|a, b| {
        a.0.started
            .cmp(&b.0.started)
            .then(a.0.run_id.cmp(&b.0.run_id))
    });
    Ok(out)
}

fn history(cli: &Cli, state: &StateDir) -> CliResult {
    let runs = list_runs(state).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot read {}: {e}", state.runs().display()),
        )
    })?;
    if cli.json {
        let list: Vec<&RunSummary> = runs.iter().map(|(r, _)| r).collect();
        crate::outln!("{}", crate::redact::json_string(&list, true));
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        crate::outln!("no runs yet in {}", state.runs().display());
        return Ok(exit::OK);
    }
    crate::outln!(
        "{:<30} {:<25} {:<8} {:<12} {:>9}  PLUGINS",
        "RUN",
        "STARTED",
        "MODE",
        "OUTCOME",
        "DURATION"
    );
    for (r, _) in &runs {
        let d = r
            .duration_ms
            .map(|d| fmt_duration(Duration::from_millis(d)))
            .unwrap_or_else(|| "-".into());
        crate::outln!(
            "{:<30} {:<25} {:<8} {:<12} {:>9}  {}",
            r.run_id,
            r.started,
            r.mode,
            r.outcome,
            d,
            r.plugins.join(",")
        );
    }
    Ok(exit::OK)
}

fn show(cli: &Cli, state: &StateDir, id: &str) -> CliResult {
    let runs = list_runs(state).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot read {}: {e}", state.runs().display()),
        )
    })?;
    let (summary, path) = one_run(state, &runs, id)?;
    let events = crate::journal::read(path)
        .map_err(|e| (exit::FAILED, format!("cannot read {}: {e}", path.display())))?;
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&events, true));
        return Ok(exit::OK);
    }
    crate::outln!(
        "run {} of {:?} ({}), started {}: {}",
        summary.run_id,
        summary.runbook,
        summary.mode,
        summary.started,
        summary.outcome
    );
    let t0 = events.first().and_then(|e| parse_ts(&e["ts"]));
    for e in &events {
        let offset = match (t0, parse_ts(&e["ts"])) {
            (Some(a), Some(b)) => format!(
                "+{:>8.3}s",
                b.duration_since(a).unwrap_or_default().as_secs_f64()
            ),
            _ => " ".repeat(10),
        };
        crate::outln!("{offset}  {}", describe_event(e));
    }
    crate::outln!("journal: {}", path.display());
    Ok(exit::OK)
}

fn parse_ts(v: &Value) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(v.as_str()?).ok()
}

/// The run a (prefix of a) run id names, among `runs`.
fn one_run<'a>(
    state: &StateDir,
    runs: &'a [(RunSummary, PathBuf)],
    id: &str,
) -> Result<(&'a RunSummary, &'a PathBuf), (i32, String)> {
    let matches: Vec<_> = runs
        .iter()
        .filter(|(r, _)| r.run_id.starts_with(id))
        .collect();
    match matches.as_slice() {
        [(summary, path)] => Ok((summary, path)),
        [] => Err((
            exit::USAGE,
            format!(
                "no run {id:?} in {}; `rewind history` lists them",
                state.runs().display()
            ),
        )),
        many => {
            let ids: Vec<&str> = many.iter().map(|(r, _)| r.run_id.as_str()).collect();
            Err((
                exit::USAGE,
                format!(
                    "{id:?} matches {} runs ({}); give more of the id",
                    ids.len(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// One line for a journal event.
pub fn describe_event(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    let plugin = s("plugin");
    match e["event"].as_str().unwrap_or_default() {
        "run-start" => format!("start {} run of {}", s("mode"), s("runbook")),
        "plugin-loaded" => format!(
            "[{plugin}] loaded {} (sha256 {}, {})",
            s("component"),
            &s("sha256")[..12.min(s("sha256").len())],
            if e["compiled"].as_bool() == Some(true) {
                "compiled"
            } else {
                "from cache"
            }
        ),
        "assessment" => {
            let a = &e["assessment"];
            let mut line = format!(
                "[{plugin}] assessment: {} severity, scenario {}, rollback {}",
                a["severity"].as_str().unwrap_or_default(),
                a["scenario"],
                a["rollback"]
            );
            append_findings(&mut line, &a["findings"]);
            line
        }
        "plan" => format!(
            "[{plugin}] plan level {} ({}): {} steps",
            e["level"],
            s("level_name"),
            e["steps"].as_array().map_or(0, Vec::len)
        ),
        "step-start" => format!("[{plugin}] step {} started: {}", s("step"), s("title")),
        "action" => format!(
            "[{plugin}]   {} {}",
            if e["executed"].as_bool() == Some(true) {
                "did"
            } else {
                "would"
            },
            s("what")
        ),
        "log" => format!("[{plugin}]   log {}: {}", s("level"), s("message")),
        "step-end" => {
            let mut line = format!(
                "[{plugin}] step {} {} in {:.1} ms: {}",
                s("step"),
                s("status"),
                e["duration_ms"].as_f64().unwrap_or_default(),
                s("message")
            );
            append_findings(&mut line, &e["findings"]);
            line
        }
        "step-skipped" => format!("[{plugin}] step {} skipped", s("step")),
        "manual-approved" => format!(
            "[{plugin}] manual step {} confirmed by {}",
            s("step"),
            s("by")
        ),
        "verification" => {
            let v = &e["verification"];
            let mut line = format!(
                "[{plugin}] verify: {} ({})",
                if v["healthy"].as_bool() == Some(true) {
                    "healthy"
                } else {
                    "NOT healthy"
                },
                v["summary"].as_str().unwrap_or_default()
            );
            append_findings(&mut line, &v["findings"]);
            line
        }
        "escalate" => format!(
            "[{plugin}] escalate from level {} to {}: {}",
            e["from"],
            e["to"],
            s("reason")
        ),
        "plugin-end" => {
            let err = s("error");
            if err.is_empty() {
                format!("[{plugin}] {}", s("outcome"))
            } else {
                format!("[{plugin}] {}: {err}", s("outcome"))
            }
        }
        "drill-phase" => format!(
            "drill phase {}: {:.1} ms{}",
            s("phase"),
            e["ms"].as_f64().unwrap_or_default(),
            e["error"]
                .as_str()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        ),
        "reload" => {
            let r = &e["reload"];
            format!(
                "[{plugin}] reloaded {} -> {} before step {} (compiled in {:.1} ms)",
                r["from"].as_str().unwrap_or_default(),
                r["to"].as_str().unwrap_or_default(),
                r["before_step"].as_str().unwrap_or_default(),
                r["compile_ms"].as_f64().unwrap_or_default()
            )
        }
        "reload-refused" => format!("[{plugin}] refused a changed plugin file: {}", s("error")),
        "plugin-skipped" => format!("[{plugin}] skipped: {}", s("reason")),
        "run-end" => {
            let err = s("error");
            let mut line = format!("end: {}", e["outcome"].as_str().unwrap_or_default());
            if !err.is_empty() {
                line.push_str(&format!(": {err}"));
            }
            line
        }
        other => format!("{other} {e}"),
    }
}

fn append_findings(line: &mut String, findings: &Value) {
    for f in findings.as_array().into_iter().flatten() {
        if let Ok(f) = serde_json::from_value::<FindingReport>(f.clone()) {
            line.push_str("\n            ");
            line.push_str(&format_finding(&f));
        }
    }
}

fn drill_cmd(
    cli: &Cli,
    path: &Path,
    junit: Option<&Path>,
    opts: &crate::drill::DrillOptions,
) -> CliResult {
    let runbook = load_runbook(cli, path)?;
    let rt = std::sync::Arc::new(runtime(cli, &runbook)?);
    handle_signals()?;
    let reports =
        crate::drill::run(&runbook, &rt, opts).map_err(|e| (e.exit_code(), e.to_string()))?;
    if let Some(path) = junit
        && let Err(e) =
            crate::junit::write(&crate::junit::drill_report(&runbook.name, &reports), path)
    {
        crate::errln!("error: {e}");
    }
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&reports, true));
    } else {
        for d in &reports {
            crate::outln!();
            crate::redact::stdout_text(&crate::drill::markdown(d));
            crate::outln!(
                "report: {}",
                crate::drill::drills_dir(&runbook.state())
                    .join(format!("{}.md", d.id))
                    .display()
            );
        }
    }
    if reports.iter().all(|d| d.verdict != "fail") {
        Ok(exit::OK)
    } else {
        Ok(exit::FAILED)
    }
}

fn drills_cmd(cli: &Cli, state: &StateDir) -> CliResult {
    let list = crate::drill::list(state).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot read the drills in {}: {e}", state.path().display()),
        )
    })?;
    if cli.json {
        crate::outln!("{}", crate::redact::json_string(&list, true));
        return Ok(exit::OK);
    }
    if list.is_empty() {
        crate::outln!(
            "no drills yet in {}",
            crate::drill::drills_dir(state).display()
        );
        return Ok(exit::OK);
    }
    crate::outln!(
        "{:<30} {:<25} {:<20} {:>10} {:>10} {:>10}  VERDICT  SLOWEST",
        "DRILL",
        "STARTED",
        "SCENARIO",
        "RECOVERY",
        "RTO",
        "MARGIN"
    );
    for d in &list {
        let f = |ms: f64| fmt_duration(Duration::from_secs_f64(ms.abs() / 1e3));
        let rto = d.rto_ms.map(|r| f(r as f64)).unwrap_or_else(|| "-".into());
        let margin = d
            .margin_ms
            .map(|m| format!("{}{}", if m < 0.0 { "-" } else { "+" }, f(m)))
            .unwrap_or_else(|| "-".into());
        crate::outln!(
            "{:<30} {:<25} {:<20} {:>10} {:>10} {:>10}  {:<7}  {}",
            d.id,
            d.started,
            d.scenario,
            f(d.recovery_ms),
            rto,
            margin,
            d.verdict,
            d.slowest_phase
        );
    }
    Ok(exit::OK)
}
