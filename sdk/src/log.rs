//! Messages into the run's journal and onto the operator's terminal (the
//! WIT `log` interface): `log::info(format_args!("stopping pid {pid}"))`
//! or `log::warn("no pid file")`.

use std::fmt::Display;

pub use crate::bindings::rewind::plugin::log::{Level, log};

/// Log at `trace`.
pub fn trace(message: impl Display) {
    log(Level::Trace, &message.to_string());
}
/// Log at `debug`.
pub fn debug(message: impl Display) {
    log(Level::Debug, &message.to_string());
}
/// Log at `info`.
pub fn info(message: impl Display) {
    log(Level::Info, &message.to_string());
}
/// Log at `warn`.
pub fn warn(message: impl Display) {
    log(Level::Warn, &message.to_string());
}
/// Log at `error`.
pub fn error(message: impl Display) {
    log(Level::Error, &message.to_string());
}
