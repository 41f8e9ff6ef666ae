//! CPU and memory readings for `health.system` and `health.processes`,
//! straight from `/proc`, without sleeping.
//!
//! A CPU percentage needs two readings of a counter some time apart. The
//! usual way (sysinfo, `top -bn1`) sleeps ~200 ms between them inside the
//! call, which every probe then pays. Here the first reading is kept, and
//! the next call measures over the time since:
//!
//! - a process's CPU is measured since the previous reading of that same
//!   process (pid and start time) in this rewind, or over its whole life on
//!   the first reading (its CPU time divided by its age, both from `/proc`);
//! - the machine's CPU is measured since the previous `system` call, or on
//!   the first call since the reading taken when the host started
//!   ([`prime`]). When that window is shorter than [`MIN_WINDOW`] (a CPU
//!   counter ticks every 10 ms), the window is widened to the machine's
//!   whole uptime rather than reporting noise.
//!
//! Under `watch`, where probes repeat every period, each reading covers one
//! period exactly: what "CPU over the last interval" should mean.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The shortest window over which a difference of CPU counters means
/// something (counters advance in clock ticks, usually 10 ms).
pub const MIN_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Clock ticks per second, the unit of `/proc/<pid>/stat` CPU times.
fn ticks_per_second() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .map_or(100.0, |t| t as f64)
    })
}

/// One process's counters, as `/proc/<pid>/stat` gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcTimes {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, one process.
    pub start_ticks: u64,
    /// Process state letter (`R`, `S`, `Z`...).
    pub state: char,
}

/// Read `/proc/<pid>/stat`; `None` when the process is gone.
pub fn proc_times(pid: u32) -> Option<ProcTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces and ')'.
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    // After the state: ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime cutime cstime priority nice threads
    // itrealvalue starttime (fields 4..=22 of proc(5)).
    let rest: Vec<&str> = f.take(19).collect();
    let utime: u64 = rest.get(10)?.parse().ok()?;
    let stime: u64 = rest.get(11)?.parse().ok()?;
    let start_ticks: u64 = rest.get(18)?.parse().ok()?;
    Some(ProcTimes {
        cpu_ticks: utime + stime,
        start_ticks,
        state,
    })
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Seconds since boot (`/proc/uptime`).
fn uptime_s() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Previous readings, kept across calls for the life of the host process.
struct Samples {
    procs: HashMap<(u32, u64), (Instant, u64)>,
    machine: Option<(Instant, MachineTimes)>,
}

fn samples() -> &'static Mutex<Samples> {
    static S: OnceLock<Mutex<Samples>> = OnceLock::new();
    S.get_or_init(|| {
        Mutex::new(Samples {
            procs: HashMap::new(),
            machine: None,
        })
    })
}

/// A process's CPU use in percent of one core (above 100 for a process
/// busy on several cores), over the window described in the module doc.
pub fn process_cpu_percent(pid: u32, t: ProcTimes) -> f32 {
    let now = Instant::now();
    let mut s = samples().lock().unwrap_or_else(|e| e.into_inner());
    let key = (pid, t.start_ticks);
    let previous = s.procs.get(&key).copied();
    let pct = match previous {
        Some((at, ticks)) if now.duration_since(at) >= MIN_WINDOW => {
            let secs = now.duration_since(at).as_secs_f64();
            t.cpu_ticks.saturating_sub(ticks) as f64 / ticks_per_second() / secs * 100.0
        }
        _ => lifetime_percent(t),
    };
    // Keep the older reading while the window is still too short, so
    // back-to-back calls do not keep the window below MIN_WINDOW forever.
    if previous.is_none_or(|(at, _)| now.duration_since(at) >= MIN_WINDOW) {
        s.procs.insert(key, (now, t.cpu_ticks));
    }
    // Forget processes that are gone, so a long watch does not grow this.
    if s.procs.len() > 4096 {
        s.procs
            .retain(|(p, start), _| proc_times(*p).is_some_and(|pt| pt.start_ticks == *start));
    }
    pct as f32
}

fn lifetime_percent(t: ProcTimes) -> f64 {
    let tck = ticks_per_second();
    let Some(up) = uptime_s() else { return 0.0 };
    let age = up - t.start_ticks as f64 / tck;
    if age <= 0.0 {
        return 0.0;
    }
    t.cpu_ticks as f64 / tck / age * 100.0
}

/// The machine's CPU counters (first line of `/proc/stat`).
#[derive(Debug, Clone, Copy)]
struct MachineTimes {
    busy: u64,
    total: u64,
}

fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user and nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some(MachineTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Take the machine's first CPU reading now (at host start), so the first
/// `system` call has a window to measure over.
pub fn prime() {
    let mut s = samples().lock().unwrap_or_else(|e| e.into_inner());
    if s.machine.is_none() {
        s.machine = machine_times().map(|m| (Instant::now(), m));
    }
}

/// The machine's CPU use in percent (0-100), over the window described in
/// the module doc.
pub fn machine_cpu_percent() -> f32 {
    let Some(now_t) = machine_times() else {
        return 0.0;
    };
    let now = Instant::now();
    let mut s = samples().lock().unwrap_or_else(|e| e.into_inner());
    let base = match s.machine {
        Some((at, m)) if now.duration_since(at) >= MIN_WINDOW && now_t.total > m.total => m,
        // Too short a window: since boot (counters start at zero).
        _ => MachineTimes { busy: 0, total: 0 },
    };
    if s.machine
        .is_none_or(|(at, _)| now.duration_since(at) >= MIN_WINDOW)
    {
        s.machine = Some((now, now_t));
    }
    let total = now_t.total.saturating_sub(base.total);
    if total == 0 {
        return 0.0;
    }
    (now_t.busy.saturating_sub(base.busy) as f64 / total as f64 * 100.0).clamp(0.0, 100.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_reads_busy_and_an_idle_one_idle() {
        // A child spinning in shell arithmetic, and one blocked on a pipe.
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let mut idle = std::process::Command::new("sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait (by condition, not time) until the busy one has used a
        // measurable amount of CPU: two seconds of life at any share.
        let start = Instant::now();
        let mut last = 0.0;
        while start.elapsed() < std::time::Duration::from_secs(60) {
            let t = proc_times(busy.id()).unwrap();
            if t.cpu_ticks as f64 / ticks_per_second() >= 0.3 {
                last = process_cpu_percent(busy.id(), t);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let idle_pct = process_cpu_percent(idle.id(), proc_times(idle.id()).unwrap());
        let rss = rss_bytes(idle.id());
        busy.kill().unwrap();
        busy.wait().unwrap();
        idle.kill().unwrap();
        idle.wait().unwrap();
        assert!(last > 0.0, "busy child measured at {last}%");
        assert!(idle_pct < last, "idle {idle_pct}% vs busy {last}%");
        assert!(rss.unwrap() > 0);
        assert!(proc_times(busy.id()).is_none_or(|t| t.state == 'Z' || t.state == 'X'));
    }

    #[test]
    fn machine_cpu_is_a_percentage_on_every_call() {
        prime();
        let p = machine_cpu_percent();
        assert!((0.0..=100.0).contains(&p), "{p}");
        let again = machine_cpu_percent();
        assert!((0.0..=100.0).contains(&again), "{again}");
    }
}
