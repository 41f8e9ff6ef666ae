//! `rewind-fixture-future`: a component built against a future, incompatible
//! version of the contract (`rewind:plugin@0.3.0`). It does not use the SDK:
//! its WIT is inline. The host must refuse to load it and say which contract
//! version it was built for.

#[allow(unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package rewind:plugin@0.3.0;

            interface log {
                log: func(message: string);
            }

            interface rollback {
                describe: func() -> string;
            }

            world procedure {
                import log;
                export rollback;
            }
        "#,
        world: "procedure",
    });
}

use bindings::exports::rewind::plugin::rollback::Guest;
use bindings::rewind::plugin::log::log;

struct Future;

impl Guest for Future {
    fn describe() -> String {
        log("describe called on a rewind:plugin@0.3.0 component");
        "a plugin for rewind:plugin@0.3.0".to_string()
    }
}

// The generated export glue is `unsafe` by nature.
#[allow(unsafe_code)]
mod export {
    use super::Future;
    super::bindings::export!(Future with_types_in super::bindings);
}
