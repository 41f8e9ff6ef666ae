//! End-to-end tests of the queue-app plugin against a local stand-in.

#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;
