//! `rewind:plugin/log`: plugin messages into the journal and the terminal.

use crate::bindings::log::{Host, Level};
use crate::state::HostState;

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        // Masked before it is cut: a cut through a secret would leave a
        // prefix that the output boundary no longer recognises. Longer
        // messages are cut so a chatty plugin cannot flood the journal;
        // the total per run is capped in `PluginEnv::log`.
        let message = crate::redact::redact(&message);
        self.timed(|env| {
            let max = env.limits.log_message_bytes;
            let mut message = message;
            if message.len() > max {
                let len = message.len();
                truncate_at(&mut message, max);
                message.push_str(&format!(
                    " [cut: {len} bytes, over the [limits] log_message_bytes of {}]",
                    crate::runtime::show_bytes(max)
                ));
            }
            env.log(level, &message)
        });
    }
}

/// Cut a string to at most `max` bytes, on a character boundary.
pub(crate) fn truncate_at(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// The first `max` bytes of a text (on a character boundary), with "..."
/// when cut: for quoting plugin text in messages.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut t = s.to_string();
    truncate_at(&mut t, max);
    t.push_str("...");
    t
}
