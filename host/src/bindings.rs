//! Host-side bindings for the `rewind:plugin` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "procedure",
    path: "../wit",
    // Every import is an `async fn` on the host: a call runs on a wasmtime
    // fiber polled by tokio, so a host call that waits (a command, a probe,
    // a grace period) waits on a future, and dropping the call's future (its
    // deadline, `cancel_calls`) stops the wait where it is.
    imports: { default: async },
    exports: { default: async },
});

pub use self::exports::rewind::plugin::rollback;
pub use self::rewind::plugin::{health, http, log, process, storage, types};

/// The WIT package version this host implements.
pub const WIT_PACKAGE: &str = "rewind:plugin";
pub const WIT_VERSION: &str = "0.2.0";

impl types::Error {
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        Self::Failed(msg.to_string())
    }
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Self::Invalid(msg.to_string())
    }
    pub fn timeout(msg: impl std::fmt::Display) -> Self {
        Self::Timeout(msg.to_string())
    }
    /// The message inside, for people (bindgen's `Display` is `Debug`).
    pub fn text(&self) -> String {
        match self {
            Self::Timeout(m) | Self::Failed(m) | Self::Invalid(m) => m.clone(),
            Self::Denied(d) => format!(
                "{} {:?} is not granted ({})",
                d.capability, d.resource, d.hint
            ),
        }
    }
}

impl From<crate::sandbox::Denied> for types::Error {
    fn from(d: crate::sandbox::Denied) -> Self {
        Self::Denied(types::Denial {
            capability: d.capability.to_string(),
            resource: d.resource,
            hint: d.hint,
        })
    }
}

impl types::Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

impl types::Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::DryRun => "dry-run",
            Self::Drill => "drill",
            Self::Check => "check",
        }
    }
    /// Whether side effects are carried out in this mode.
    pub fn executes(self) -> bool {
        matches!(self, Self::Execute | Self::Drill)
    }
}
