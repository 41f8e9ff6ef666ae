//! `rewind:plugin/log`: plugin messages into the journal and the terminal.

use crate::bindings::log::{Host, Level};
use crate::state::HostState;

/// Longer messages are cut so a chatty plugin cannot flood the journal.
const MAX_MESSAGE: usize = 16 * 1024;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        // Masked before it is cut: a cut through a secret would leave a
        // prefix that the output boundary no longer recognises.
        let mut message = crate::redact::redact(&message);
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        self.timed(|env| env.log(level, &message));
    }
}
