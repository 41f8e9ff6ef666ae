//! A private Redis server for one test: `redis-server` on a free loopback
//! port with its working directory in a temporary directory, no
//! persistence, stopped by pid when dropped. It never touches the
//! machine's own Redis or port 6379.
//!
//! ```ignore
//! #[path = "../support/redis.rs"]
//! mod redis;
//! let r = redis::RedisServer::start();
//! r.cli(&["SET", "k", "v"]);
//! assert_eq!(r.cli(&["GET", "k"]), "v");
//! ```

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    /// The temporary directory (`--dir`, the log); removed on drop.
    pub dir: tempfile::TempDir,
    pub log_file: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Start `redis-server --port P --bind 127.0.0.1 --dir <tmp> --save ''
    /// --appendonly no --daemonize no` and wait until it answers PING.
    pub fn start() -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix("rewind-redis-")
            .tempdir()
            .unwrap();
        for _ in 0..5 {
            let port = free_port();
            let log_file = dir.path().join("redis.log");
            let log = std::fs::File::create(&log_file).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("redis-server (Debian package redis-server)");
            let mut r = Self {
                port,
                dir,
                log_file: log_file.clone(),
                child: Some(child),
            };
            let start = Instant::now();
            // A failure bound: it ends at the first PONG.
            while start.elapsed() < Duration::from_secs(60) {
                if r.try_cli(&["PING"]).is_ok_and(|s| s == "PONG") {
                    return r;
                }
                if let Some(c) = &mut r.child
                    && c.try_wait().ok().flatten().is_some()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            r.stop();
            dir = std::mem::replace(
                &mut r.dir,
                tempfile::Builder::new()
                    .prefix("rewind-redis-")
                    .tempdir()
                    .unwrap(),
            );
        }
        panic!(
            "redis-server did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default()
        );
    }

    /// `redis-cli -h 127.0.0.1 -p <port> ARGS`, trimmed stdout.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
    }

    /// Run many commands through `redis-cli` on stdin (one per line).
    pub fn pipe(&self, commands: &str) {
        use std::io::Write;
        let mut c = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kill by pid and reap.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
