//! rewind: runs rollback runbooks compiled to sandboxed WebAssembly
//! components. See `docs/architecture.md` for how the pieces fit.

pub mod bindings;
pub mod cli;
pub mod drill;
pub mod imports;
pub mod journal;
pub mod junit;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod redact;
pub mod reload;
pub mod restore;
pub mod resume;
pub mod run;
pub mod runbook;
pub mod runtime;
pub mod sandbox;
pub mod session;
pub mod state;
pub mod status;
pub mod watch;
