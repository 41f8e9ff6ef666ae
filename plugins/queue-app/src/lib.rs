//! (being written)

use rewind_sdk::prelude::*;

struct P;

impl Plugin for P {
    fn describe(_ctx: &Context) -> Result<PluginInfo> {
        Ok(PluginInfo::new("queue-app", env!("CARGO_PKG_VERSION"), "queue-app", "being written")
            .level(LevelInfo::new(1, "todo", "todo")))
    }
    fn assess(_ctx: &Context) -> Result<Assessment> {
        Ok(Assessment::healthy("todo"))
    }
    fn plan(_ctx: &Context) -> Result<Vec<Step>> {
        Ok(Vec::new())
    }
    fn run_step(_ctx: &Context, _step: &str) -> Result<StepOutcome> {
        bail!("todo")
    }
    fn verify(_ctx: &Context) -> Result<Verification> {
        Ok(Verification::from_findings(Vec::new()))
    }
}

rewind_sdk::export_plugin!(P);
