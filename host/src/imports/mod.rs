//! The host side of the WIT imports: one module per interface. Each import
//! checks its grant in `crate::sandbox` first, and every side effect goes
//! through `PluginEnv::side_effect`, which is where dry runs are enforced.

mod cpu;
pub mod health;
pub mod http;
pub mod log;
pub mod process;
pub mod storage;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::Procedure;
use crate::state::HostState;

/// Add WASI (with nothing granted) and every rewind interface to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // The first machine CPU reading, so `health.system` can measure CPU
    // over the time since the host started instead of sleeping.
    cpu::prime();
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Procedure::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

impl crate::bindings::types::Host for HostState {}
