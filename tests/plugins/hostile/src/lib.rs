//! `rewind-hostile`: a plugin that misbehaves on purpose in `assess`, as
//! its `[plugin.config]` says, for the host's limits tests. What the
//! scriptable fixture cannot do (it makes one host call per op) is here:
//!
//! ```json
//! {"assess": "recurse"}                  // recurse until the stack runs out
//! {"assess": "exit", "n": 7}             // std::process::exit(7); WASI
//!                                        // preview 2 reports any code but
//!                                        // 0 as 1
//! {"assess": "findings", "n": 100000}    // an assessment with n findings
//! {"assess": "summary", "n": 1000000}    // a summary of n bytes
//! {"assess": "log", "n": 1000, "size": 65536}
//!                                        // n log messages of `size` bytes
//! {"assess": "host-loop"}                // call the host forever (cheap
//!                                        // calls: little guest time)
//! {"assess": "wait", "n": 3600000}       // ask the host to wait n ms for a
//!                                        // port that never opens
//! {"assess": "sleep", "n": 3600000}      // std::thread::sleep n ms (a WASI
//!                                        // clock subscription and poll)
//! ```
//!
//! `describe`, `plan`, `run-step` and `verify` behave.

use rewind_sdk::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    assess: String,
    #[serde(default)]
    n: u64,
    #[serde(default)]
    size: usize,
}

/// Recursion the optimizer cannot turn into a loop: every frame keeps a
/// buffer and uses the result of the call below it.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, seed: &[u8; 256]) -> u64 {
    let mut buf = *seed;
    buf[(depth % 256) as usize] = depth as u8;
    let below = recurse(depth + 1, &buf);
    std::hint::black_box(below + u64::from(buf[(below % 256) as usize]))
}

struct Hostile;

impl Plugin for Hostile {
    fn describe(_ctx: &Context) -> Result<PluginInfo> {
        Ok(PluginInfo::new(
            "hostile",
            env!("CARGO_PKG_VERSION"),
            "nothing",
            "misbehaves on purpose",
        )
        // It plans no step, so its level touches nothing.
        .level(LevelInfo::new(1, "level 1", "does nothing").effect(Effect::Observe)))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg: Config = ctx.config()?;
        match cfg.assess.as_str() {
            "recurse" => {
                let n = recurse(0, std::hint::black_box(&[7u8; 256]));
                Ok(Assessment::healthy(format!("recursion ended at {n}")))
            }
            "exit" => std::process::exit(cfg.n as i32),
            "findings" => {
                let findings = (0..cfg.n)
                    .map(|i| Finding::new(format!("check {i}"), i, "<= 0", true))
                    .collect();
                Ok(Assessment::healthy("many findings").with_findings(findings))
            }
            "summary" => Ok(Assessment::healthy("x".repeat(cfg.n as usize))),
            "log" => {
                let line = "y".repeat(cfg.size);
                for _ in 0..cfg.n {
                    log::info(&line);
                }
                Ok(Assessment::healthy(format!("logged {} lines", cfg.n)))
            }
            "host-loop" => loop {
                let _ = std::hint::black_box(rewind_sdk::health::system());
            },
            "wait" => {
                let w = rewind_sdk::health::TcpProbe::new("127.0.0.1", 9)
                    .wait(WaitPolicy::every(1000).timeout_ms(cfg.n))?;
                Ok(Assessment::healthy(format!("waited {} ms", w.elapsed_ms)))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(cfg.n));
                Ok(Assessment::healthy(format!("slept {} ms", cfg.n)))
            }
            other => bail!("hostile: unknown assess {other:?}"),
        }
    }

    fn plan(_ctx: &Context) -> Result<Vec<Step>> {
        Ok(Vec::new())
    }

    fn run_step(_ctx: &Context, step: &str) -> Result<StepOutcome> {
        Ok(StepOutcome::ok(step))
    }

    fn verify(_ctx: &Context) -> Result<Verification> {
        Ok(Verification::from_findings(Vec::new()))
    }
}

rewind_sdk::export_plugin!(Hostile);
