//! `rewind-fixture-past`: a component built against an older, incompatible
//! version of the contract (`rewind:plugin@0.1.0`). It does not use the SDK:
//! its WIT is inline. The host must refuse to load it and say which contract
//! version it was built for.

#[allow(unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package rewind:plugin@0.1.0;

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

struct Past;

impl Guest for Past {
    fn describe() -> String {
        log("describe called on a rewind:plugin@0.1.0 component");
        "a plugin for rewind:plugin@0.1.0".to_string()
    }
}

// The generated export glue is `unsafe` by nature.
#[allow(unsafe_code)]
mod export {
    use super::Past;
    super::bindings::export!(Past with_types_in super::bindings);
}
