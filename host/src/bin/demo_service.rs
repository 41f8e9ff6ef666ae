//! `rewind-demo-service`: the small HTTP service that the demo rolls back.
//!
//! Layout under a root directory:
//!
//! ```text
//! ROOT/releases/<version>/release.toml   version = "1.1.0", healthy = true|false
//! ROOT/current -> releases/<version>     the release that is served
//! ROOT/run/service.pid                   pid of the running `serve`
//! ROOT/logs/service.log                  output of `serve` when started by `deploy`
//! ```
//!
//! - `init --root ROOT --release 1.0.0:healthy --release 1.1.0:broken --current 1.0.0`
//!   creates the releases and points `current` at one of them;
//! - `serve --root ROOT --port PORT` serves `GET /healthz` (200 `ok <version>`
//!   or 500 `broken <version>`) and `GET /version` on 127.0.0.1;
//! - `deploy --root ROOT --port PORT --version V` is what a team's deploy
//!   does: switch `current` to V atomically, stop the running service, start
//!   a new detached `serve`, print its pid.

use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "rewind-demo-service",
    about = "The demo service that rewind rolls back"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the release ROOT/current points to on 127.0.0.1:PORT.
    Serve {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        port: u16,
    },
    /// Create releases and point `current` at one of them.
    Init {
        #[arg(long)]
        root: PathBuf,
        /// VERSION:healthy or VERSION:broken; repeat for each release.
        #[arg(long = "release", required = true, value_parser = parse_release)]
        releases: Vec<Release>,
        /// The release `current` points to (default: the first given).
        #[arg(long)]
        current: Option<String>,
    },
    /// Switch `current` to VERSION, stop the running service, start a new one.
    Deploy {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        version: String,
    },
}

/// `ROOT/releases/<version>/release.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Release {
    version: String,
    healthy: bool,
}

fn parse_release(s: &str) -> Result<Release, String> {
    let (version, state) = s
        .split_once(':')
        .ok_or_else(|| format!("expected VERSION:healthy or VERSION:broken, got {s:?}"))?;
    if version.is_empty() || version.contains('/') || version.starts_with('.') {
        return Err(format!("bad version {version:?}"));
    }
    let healthy = match state {
        "healthy" => true,
        "broken" => false,
        _ => {
            return Err(format!(
                "expected healthy or broken after ':', got {state:?}"
            ));
        }
    };
    Ok(Release {
        version: version.to_string(),
        healthy,
    })
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Serve { root, port } => serve(&root, port),
        Cmd::Init {
            root,
            releases,
            current,
        } => init(&root, &releases, current.as_deref()),
        Cmd::Deploy {
            root,
            port,
            version,
        } => deploy(&root, port, &version),
    }
}

fn pid_file(root: &Path) -> PathBuf {
    root.join("run").join("service.pid")
}

/// Write a file atomically: temporary file, then rename.
fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Point ROOT/current at releases/<version> atomically (a new link renamed
/// over the old one).
fn switch_current(root: &Path, version: &str) -> Result<()> {
    let release = root.join("releases").join(version);
    if !release.join("release.toml").is_file() {
        bail!(
            "no release {version} in {}",
            root.join("releases").display()
        );
    }
    let tmp = root.join(format!(".current.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, root.join("current")).context("switching current")
}

fn init(root: &Path, releases: &[Release], current: Option<&str>) -> Result<()> {
    for dir in ["releases", "run", "logs"] {
        fs::create_dir_all(root.join(dir))
            .with_context(|| format!("creating {}", root.join(dir).display()))?;
    }
    for r in releases {
        let dir = root.join("releases").join(&r.version);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("release.toml"), &toml::to_string(r)?)?;
    }
    let current = current.unwrap_or(&releases[0].version);
    switch_current(root, current)?;
    println!(
        "initialized {} with releases {}; current -> releases/{current}",
        root.display(),
        releases
            .iter()
            .map(|r| format!(
                "{} ({})",
                r.version,
                if r.healthy { "healthy" } else { "broken" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn serve(root: &Path, port: u16) -> Result<()> {
    let file = root.join("current").join("release.toml");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let release: Release =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;

    // The previous instance may still be letting go of the port.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    let server = loop {
        match tiny_http::Server::http(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("binding {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!("binding {addr}: {e}"),
        }
    };
    fs::create_dir_all(root.join("run"))?;
    write_atomic(&pid_file(root), &format!("{}\n", std::process::id()))?;
    println!(
        "rewind-demo-service {} ({}) listening on http://{addr} (pid {})",
        release.version,
        if release.healthy { "healthy" } else { "broken" },
        std::process::id()
    );
    let _ = std::io::stdout().flush();

    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let (status, body) = match (req.method(), path.as_str()) {
            (tiny_http::Method::Get, "/healthz") if release.healthy => {
                (200, format!("ok {}", release.version))
            }
            (tiny_http::Method::Get, "/healthz") => (500, format!("broken {}", release.version)),
            (tiny_http::Method::Get, "/version") => (200, release.version.clone()),
            _ => (404, "not found".to_string()),
        };
        let resp = tiny_http::Response::from_string(body).with_status_code(status);
        if let Err(e) = req.respond(resp) {
            eprintln!("responding: {e}");
        }
    }
    Ok(())
}

/// A process's command line, arguments joined by spaces.
fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (!raw.is_empty()).then(|| {
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .replace('\0', " ")
    })
}

fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0); it has no command line any more.
    kill(Pid::from_raw(pid as i32), None).is_ok() && cmdline(pid).is_some()
}

/// Stop the `serve` named in the pid file, if it is one: TERM, wait up to
/// 5 s, then KILL.
fn stop_running(root: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(pid_file(root)) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        eprintln!("ignoring {}: no pid in it", pid_file(root).display());
        return Ok(());
    };
    let ours = format!("serve --root {}", root.display());
    match cmdline(pid) {
        Some(cmd) if pid > 1 && cmd.contains("rewind-demo-service") && cmd.contains(&ours) => {}
        _ => {
            eprintln!(
                "pid {pid} from the pid file is not running this service; not stopping anything"
            );
            return Ok(());
        }
    }
    eprintln!("stopping pid {pid}");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
        .with_context(|| format!("TERM to pid {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        eprintln!("pid {pid} ignored TERM for 5 s; killing it");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn deploy(root: &Path, port: u16, version: &str) -> Result<()> {
    switch_current(root, version)?;
    stop_running(root)?;
    fs::create_dir_all(root.join("logs"))?;
    let log_path = root.join("logs").join("service.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating this program")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--root")
        .arg(root)
        .arg("--port")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting serve")?;
    // Wait until it listens and its pid file names it, so whoever deployed
    // can probe it, or stop it by its pid file, right away.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "serve exited at once ({status}); see {}",
                log_path.display()
            );
        }
        let recorded = fs::read_to_string(pid_file(root)).ok();
        if recorded.as_deref().map(str::trim) == Some(child.id().to_string().as_str())
            && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "serve (pid {}) does not listen on {addr} after 10 s; see {}",
                child.id(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{}", child.id());
    Ok(())
}
