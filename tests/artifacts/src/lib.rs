//! Where the test plugins are: absolute paths of the `.wasm` components that
//! this crate's build script builds (for `wasm32-wasip2`, profile `plugin`,
//! into `target/plugins`). Add it as a dev-dependency and load
//! `rewind_test_artifacts::FIXTURE` and friends.
//!
//! - [`DEMO`]: `plugins/demo`, rolls the demo service back;
//! - [`FIXTURE`]: `tests/plugins/fixture`, the scriptable test plugin (its
//!   config format is documented at the top of its `lib.rs`);
//! - [`FUTURE`]: `tests/plugins/future`, built against `rewind:plugin@0.2.0`:
//!   the host must refuse it.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
