//! Where the test plugins are: absolute paths of the `.wasm` components that
//! this crate's build script builds (for `wasm32-wasip2`, profile `plugin`,
//! into `target/plugins`). Add it as a dev-dependency and load
//! `rewind_test_artifacts::FIXTURE` and friends.
//!
//! - [`DEMO`]: `plugins/demo`, rolls the demo service back;
//! - [`FIXTURE`]: `tests/plugins/fixture`, the scriptable test plugin (its
//!   config format is documented at the top of its `lib.rs`);
//! - [`FUTURE`]: `tests/plugins/future`, built against `rewind:plugin@0.3.0`,
//!   and [`PAST`]: `tests/plugins/past`, built against `rewind:plugin@0.1.0`
//!   (before step effects): the host must refuse both.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
