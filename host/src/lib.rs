//! rewind: runs rollback runbooks compiled to sandboxed WebAssembly
//! components. See `docs/architecture.md` for how the pieces fit.

pub mod bindings;
pub mod cli;
pub mod imports;
pub mod journal;
pub mod run;
pub mod runbook;
pub mod runtime;
pub mod sandbox;
pub mod state;
