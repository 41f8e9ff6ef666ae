//! Text for step messages and findings, the same in every plugin.

/// `s` on one line (runs of whitespace, newlines included, become one
/// space), cut to `max` characters with `...`: command output in a message.
pub fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}...", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// A duration in milliseconds as people write it: `2 min`, `1.5 s`,
/// `250 ms`.
pub fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_and_cuts() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(fmt_ms(120_000), "2 min");
        assert_eq!(fmt_ms(90_000), "90.0 s");
        assert_eq!(fmt_ms(1500), "1.5 s");
        assert_eq!(fmt_ms(250), "250 ms");
    }
}
