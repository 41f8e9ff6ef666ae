//! `rewind-mistyped`: built from `wit/`, a copy of the current contract in
//! which `assess` returns `result<string, string>` instead of an assessment.
//! Its version and export names are right, so only a check of the export
//! types tells it apart: the host must refuse it at load, naming `assess`.

#[allow(unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "procedure" });
}

use bindings::exports::rewind::plugin::rollback::{
    Context, Escalation, Guest, PluginInfo, Step, StepOutcome, Verification,
};

struct Mistyped;

impl Guest for Mistyped {
    fn describe(_ctx: Context) -> Result<PluginInfo, String> {
        Ok(PluginInfo {
            name: "mistyped".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            service: "nothing".into(),
            description: "assess has the wrong type".into(),
            levels: Vec::new(),
            needs: bindings::exports::rewind::plugin::rollback::Needs {
                http: Vec::new(),
                tcp: Vec::new(),
                exec: Vec::new(),
                signal: Vec::new(),
                read: Vec::new(),
                write: Vec::new(),
                sqlite: Vec::new(),
                env: Vec::new(),
            },
        })
    }

    fn assess(_ctx: Context) -> Result<String, String> {
        Ok("not an assessment".into())
    }

    fn plan(_ctx: Context) -> Result<Vec<Step>, String> {
        Ok(Vec::new())
    }

    fn run_step(_ctx: Context, step: String) -> Result<StepOutcome, String> {
        Ok(StepOutcome {
            ok: true,
            message: step,
            findings: Vec::new(),
        })
    }

    fn verify(_ctx: Context) -> Result<Verification, String> {
        Ok(Verification {
            healthy: true,
            summary: String::new(),
            findings: Vec::new(),
            escalation: Escalation::Next,
        })
    }
}

// The generated export glue is `unsafe` by nature.
#[allow(unsafe_code)]
mod export {
    use super::Mistyped;
    super::bindings::export!(Mistyped with_types_in super::bindings);
}
