//! The output boundary. Every text that leaves the host (journal lines,
//! terminal lines, `--json`, drill reports, error messages, log lines) goes
//! through this module, which does two things:
//!
//! - it masks secrets: the values a runbook marks with `${secret:NAME}` (see
//!   docs/runbook.md) become `***`, also in the escaped forms such a value
//!   takes in JSON, in `{:?}` quoting (command lines) and in URLs;
//! - for terminals and text files, it escapes control characters and bidi
//!   overrides, so text a plugin supplies cannot move the cursor, clear the
//!   screen, set the window title or reorder what the operator reads.
//!
//! Masking is done here, where text leaves, and not where it is produced:
//! a plugin can put a secret it was given into any string it returns (a
//! summary, a step title, a log message, an error, a URL), and every one of
//! those passes this boundary. Secrets are registered process-wide when a
//! runbook is loaded (`Runbook::parse`): rewind runs one runbook per
//! process, and a global means no writer can forget to ask for them.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{PoisonError, RwLock};

use serde::Serialize;
use serde_json::Value;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter secret values are refused when the runbook is loaded: masking
/// every occurrence of one to three characters would blank out ordinary
/// words and numbers, and what was masked would give the value away.
pub const MIN_SECRET_CHARS: usize = 4;

/// A set of secret values, each kept in every form it may take in output,
/// longest first (so a form that contains another is masked whole).
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    forms: Vec<String>,
}

impl Secrets {
    pub const fn new() -> Self {
        Self { forms: Vec::new() }
    }

    /// Add a value (and its escaped forms). Empty values are ignored: there
    /// is nothing to mask.
    pub fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        for f in forms(value) {
            if !self.forms.contains(&f) {
                self.forms.push(f);
            }
        }
        self.forms
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every form of every secret replaced by `***`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for f in &self.forms {
            if out.contains(f.as_str()) {
                out = Cow::Owned(out.replace(f.as_str(), MASK));
            }
        }
        out
    }

    /// Mask every string in a JSON value, object keys included. Done on the
    /// value, not on its text, so a secret ending in `\` cannot cut a JSON
    /// escape in half.
    pub fn redact_json(&self, v: &mut Value) {
        if self.forms.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            Value::Object(m) => {
                let old = std::mem::take(m);
                for (k, mut x) in old {
                    self.redact_json(&mut x);
                    m.insert(self.redact(&k).into_owned(), x);
                }
            }
            _ => {}
        }
    }
}

/// The forms a value takes in output: as is; escaped as in a JSON or TOML
/// string or quoted by `{:?}` (how command lines show an argument with a
/// space or a quote), once or twice (a plugin's JSON result quoted again
/// in a message); percent-encoded (in a URL).
fn forms(value: &str) -> Vec<String> {
    fn debug(v: &str) -> String {
        let q = format!("{v:?}");
        q[1..q.len() - 1].to_string()
    }
    fn json(v: &str) -> String {
        let q = serde_json::to_string(v).expect("a string serializes");
        q[1..q.len() - 1].to_string()
    }
    let escapes: [fn(&str) -> String; 3] = [debug, json, toml_escape];
    let mut out = vec![value.to_string()];
    for e in escapes {
        let once = e(value);
        for e2 in escapes {
            out.push(e2(&once));
        }
        out.push(once);
    }
    let mut pct = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            pct.push(b as char);
        } else {
            let _ = write!(pct, "%{b:02X}");
        }
    }
    out.push(pct);
    out.sort();
    out.dedup();
    out
}

/// `value` escaped for the inside of a TOML basic string (`"..."`): the
/// text `${...}` substitution writes, so the value is read back exactly and
/// cannot end the string or start a new key.
pub fn toml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

static GLOBAL: RwLock<Secrets> = RwLock::new(Secrets::new());

/// Mask this value in everything the process writes from now on.
pub fn register(value: &str) {
    GLOBAL
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .add(value);
}

/// `text` with every registered secret masked.
pub fn redact(text: &str) -> String {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .redact(text)
        .into_owned()
}

/// A JSON value with every registered secret masked in its strings.
pub fn redact_value(v: &Value) -> Value {
    let mut v = v.clone();
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .redact_json(&mut v);
    v
}

/// Characters a terminal acts on instead of showing: C0 controls but
/// newline and tab, DEL, C1 controls (`\u{9b}` is a CSI on its own), and
/// the bidi controls that reorder text on screen.
fn acts_on_terminal(c: char) -> bool {
    matches!(c,
        '\0'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}' | '\u{80}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Control characters made visible: `\x1b`, `\u{9b}`, `\u{202e}`. Newlines
/// and tabs stay.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !acts_on_terminal(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Text for a terminal or a text file: secrets masked, controls escaped.
pub fn terminal(text: &str) -> String {
    escape_controls(&redact(text)).into_owned()
}

/// JSON text with secrets masked. serde_json escapes C0 controls itself;
/// DEL, C1 and bidi controls it leaves raw, so they are written as `\uXXXX`
/// escapes here: the same JSON value, harmless on a terminal.
pub fn json_string(value: &impl Serialize, pretty: bool) -> String {
    let v = serde_json::to_value(value).expect("reports serialize to JSON");
    let v = redact_value(&v);
    let text = if pretty {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    }
    .expect("a JSON value serializes");
    if !text.chars().any(acts_on_terminal) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_terminal(c) {
            // Outside strings JSON text has only ASCII structure and
            // whitespace, so these can only be inside a string.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Write one line to stdout through the boundary. A closed stdout (a pipe
/// whose reader went away) is not worth a panic.
pub fn stdout_line(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", terminal(text));
    let _ = o.flush();
}

/// Write text (no newline added) to stdout through the boundary.
pub fn stdout_text(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = write!(o, "{}", terminal(text));
    let _ = o.flush();
}

/// Write one line to stderr through the boundary.
pub fn stderr_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", terminal(text));
}

/// `println!` through the boundary: secrets masked, controls escaped.
#[macro_export]
macro_rules! outln {
    () => { $crate::redact::stdout_line("") };
    ($($arg:tt)*) => { $crate::redact::stdout_line(&format!($($arg)*)) };
}

/// `eprintln!` through the boundary: secrets masked, controls escaped.
#[macro_export]
macro_rules! errln {
    () => { $crate::redact::stderr_line("") };
    ($($arg:tt)*) => { $crate::redact::stderr_line(&format!($($arg)*)) };
}

/// The `tracing` writer for stderr: each event is buffered whole and sent
/// through the boundary when the formatter is done with it, so a secret is
/// never split across two writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter(Vec::new())
    }
}

/// One log event on its way to stderr.
#[derive(Debug)]
pub struct EventWriter(Vec<u8>);

impl std::io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = terminal(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_form() {
        let mut s = Secrets::new();
        s.add("to\"k\\en 9");
        for text in [
            "x to\"k\\en 9 y",
            r#"x "to\"k\\en 9" y"#,
            r#"x {"s": "to\\\"k\\\\en 9"} y"#,
            "x to%22k%5Cen%209 y",
        ] {
            let r = s.redact(text);
            assert!(r.contains(MASK), "{text} -> {r}");
            assert!(
                !r.contains("en 9") && !r.contains("en%209"),
                "{text} -> {r}"
            );
        }
        assert_eq!(s.redact("nothing here"), "nothing here");
    }

    #[test]
    fn json_stays_valid_when_a_secret_ends_in_a_backslash() {
        let mut s = Secrets::new();
        s.add("abcd\\");
        let mut v = serde_json::json!({"a": "1 abcd\\", "abcd\\ key": ["abcd\\"]});
        s.redact_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": "1 ***", "*** key": ["***"]}));
    }

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        let t = "a\u{1b}[2Jb\u{9b}31m\u{202e}c\r\u{7}\u{7f}\td\ne";
        let e = escape_controls(t);
        assert_eq!(e, "a\\x1b[2Jb\\u{9b}31m\\u{202e}c\\x0d\\x07\\x7f\td\ne");
        assert!(matches!(escape_controls("plain ü ✓\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_text_has_no_raw_controls_and_keeps_the_value() {
        let v = serde_json::json!({"s": "a\u{1b}b\u{9b}c\u{202e}d\u{7f}"});
        let text = json_string(&v, true);
        assert!(!text.chars().any(acts_on_terminal), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
