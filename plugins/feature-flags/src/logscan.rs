//! Reading the application log: timestamps, error rates over a window cut
//! into buckets (to tell "for more than 5 minutes" from a burst), per-feature
//! failure rates, request durations, and `grep`-style marker matching.

use rewind_sdk::clock::civil_ms;

/// The timestamp a log line starts with, in ms since the epoch:
/// `2025-11-12T14:30:00.123Z`, `2025-11-12 14:30:00,123 +01:00`,
/// `[2025-11-12T14:30:00]` ... A time without a zone is taken at
/// `default_offset_min` minutes from UTC.
pub fn parse_ts(line: &str, default_offset_min: i64) -> Option<i64> {
    let b = line.as_bytes();
    let start = usize::from(b.first() == Some(&b'['));
    let b = &b[start..];
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &b[r];
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if i < b.len() && matches!(b[i], b'.' | b',') {
        i += 1;
        let digits_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &b[digits_start..i];
        let mut v = 0i64;
        for k in 0..3 {
            v = v * 10 + frac.get(k).map_or(0, |c| i64::from(c - b'0'));
        }
        ms = v;
    }
    if i < b.len() && b[i] == b' ' && i + 1 < b.len() && matches!(b[i + 1], b'+' | b'-') {
        i += 1;
    }
    let offset_min = match b.get(i) {
        Some(b'Z') | Some(b'z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let digits: Vec<u8> = rest
                .iter()
                .take(5)
                .copied()
                .filter(u8::is_ascii_digit)
                .collect();
            if digits.len() >= 4 {
                let hh = i64::from(digits[0] - b'0') * 10 + i64::from(digits[1] - b'0');
                let mm = i64::from(digits[2] - b'0') * 10 + i64::from(digits[3] - b'0');
                let v = hh * 60 + mm;
                if sign == b'-' { -v } else { v }
            } else {
                default_offset_min
            }
        }
        _ => default_offset_min,
    };
    // A leap second (:60) is read as the next second.
    let (s, carry) = if s == 60 { (59, 1000) } else { (s, 0) };
    let t = civil_ms(
        (y as i16, mo as i8, d as i8),
        (h as i8, mi as i8, s as i8, ms as i32),
        offset_min as i32,
    )?;
    Some(t + carry)
}

/// The log's entries with their time: (ms, entry). An entry is a
/// timestamped line with the lines under it that carry no timestamp (a
/// stack trace, a continuation): one event, so a 20-line trace neither
/// counts as 20 requests nor is lost. Lines before the first timestamp
/// have no known time and are left out (see [`tail`] for a log with no
/// timestamps at all).
pub fn events(text: &str, offset_min: i64) -> Vec<(i64, &str)> {
    let mut out: Vec<(i64, usize, usize)> = Vec::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        if let Some(t) = parse_ts(line, offset_min) {
            out.push((t, start, start + line.len()));
        } else if let Some(last) = out.last_mut()
            && !line.trim().is_empty()
        {
            last.2 = start + line.len();
        }
    }
    out.into_iter().map(|(t, a, b)| (t, &text[a..b])).collect()
}

/// A line without a timestamp that continues the entry above it: a stack
/// trace (`    at f (x.js:1)`, `Caused by: ...`), an indented or closing
/// line of a multi-line message. Any other line without a timestamp is an
/// entry of its own whose time is not known (`console.log` output).
pub fn is_continuation(line: &str) -> bool {
    line.starts_with([' ', '\t', '}', ']', ')'])
        || line.starts_with("Caused by")
        || line.starts_with("...")
}

/// How many of the last `n` non-empty lines are entries without a
/// timestamp (not timestamped, not a continuation). Where there are any,
/// the recent log cannot be cut into time windows.
pub fn untimed_entries(text: &str, n: usize, offset_min: i64) -> usize {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .filter(|l| !is_continuation(l) && parse_ts(l, offset_min).is_none())
        .count()
}

/// For a log without timestamps (or whose recent lines lack them), where
/// no time window can be cut: the last `n` non-empty lines, all stamped
/// `now` (the runbook's own check, `tail -100 /var/log/app.log | grep -i
/// error | wc -l`).
pub fn tail(text: &str, n: usize, now: i64) -> Vec<(i64, &str)> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (now, *l))
        .collect()
}

/// Case-insensitive `grep -i`: `pattern` in `line`, where `.*` matches
/// anything (the runbook's `MCP.*unavailable`).
pub fn matches_ci(line: &str, pattern: &str) -> bool {
    matches(&line.to_lowercase(), &pattern.to_lowercase())
}

/// `grep` with a pattern whose only special form is `.*`.
pub fn matches(line: &str, pattern: &str) -> bool {
    let mut rest = line;
    for piece in pattern.split(".*") {
        if piece.is_empty() {
            continue;
        }
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The number after `key` in a line (`duration_ms=120` -> 120).
pub fn number_after(line: &str, key: &str) -> Option<f64> {
    if key.is_empty() {
        return None;
    }
    let i = line.find(key)? + key.len();
    let tail = &line[i..];
    let end = tail
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(tail.len());
    tail[..end].parse().ok()
}

/// What to look for in lines.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Lines matching this (case-insensitive) are errors.
    pub error: String,
    /// One pattern per feature (case-insensitive).
    pub features: Vec<String>,
    /// `duration_ms=`: the number after it is the request's duration.
    pub duration_key: String,
}

/// Counts over one window of the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub window_ms: i64,
    pub events: u64,
    pub errors: u64,
    /// (events, errors) per bucket, oldest first.
    pub buckets: Vec<(u64, u64)>,
    /// (events, errors) per feature.
    pub features: Vec<(u64, u64)>,
    pub duration_sum: f64,
    pub duration_n: u64,
}

pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Stats {
    /// Errors per event over the whole window, in percent.
    pub fn rate(&self) -> f64 {
        pct(self.errors, self.events)
    }

    /// How many buckets have traffic and an error rate above `threshold`
    /// (`>` when `strict`, else `>=`).
    pub fn buckets_above(&self, threshold: f64, strict: bool) -> usize {
        self.buckets
            .iter()
            .filter(|(n, e)| {
                let r = pct(*e, *n);
                *n > 0
                    && if strict {
                        r > threshold
                    } else {
                        r >= threshold
                    }
            })
            .count()
    }

    /// True when every bucket of the window is above the threshold: the
    /// rate has been there for the whole window.
    pub fn sustained(&self, threshold: f64, strict: bool) -> bool {
        !self.buckets.is_empty() && self.buckets_above(threshold, strict) == self.buckets.len()
    }

    pub fn mean_duration(&self) -> Option<f64> {
        (self.duration_n > 0).then(|| self.duration_sum / self.duration_n as f64)
    }
}

/// Count the events in `[now - window, now]`, cut into `buckets` buckets.
pub fn window(
    events: &[(i64, &str)],
    now: i64,
    window_ms: i64,
    buckets: usize,
    m: &Matcher,
) -> Stats {
    let buckets = buckets.max(1);
    let window_ms = window_ms.max(1);
    let start = now - window_ms;
    let mut s = Stats {
        window_ms,
        buckets: vec![(0, 0); buckets],
        features: vec![(0, 0); m.features.len()],
        ..Stats::default()
    };
    let features: Vec<String> = m.features.iter().map(|f| f.to_lowercase()).collect();
    let error = m.error.to_lowercase();
    for &(ts, line) in events {
        if ts < start {
            continue;
        }
        // A line stamped slightly in the future (clock skew) counts as now.
        let ts = ts.min(now);
        let lower = line.to_lowercase();
        let is_error = matches(&lower, &error);
        s.events += 1;
        s.errors += u64::from(is_error);
        let b = (((ts - start) as i128 * buckets as i128) / window_ms as i128) as usize;
        let b = b.min(buckets - 1);
        s.buckets[b].0 += 1;
        s.buckets[b].1 += u64::from(is_error);
        for (i, f) in features.iter().enumerate() {
            if !f.is_empty() && matches(&lower, f) {
                s.features[i].0 += 1;
                s.features[i].1 += u64::from(is_error);
            }
        }
        if let Some(d) = number_after(line, &m.duration_key) {
            s.duration_sum += d;
            s.duration_n += 1;
        }
    }
    s
}

/// The lines of the log written after byte `offset` (the whole log when it
/// is shorter than that: it was rotated).
pub fn since_offset(text: &str, offset: u64) -> &str {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    if offset > text.len() {
        return text;
    }
    // Start at a line boundary.
    let mut i = offset;
    while !text.is_char_boundary(i) {
        i += 1;
    }
    &text[i..]
}

/// The lines of `text` (the log after the restart's offset) written at or
/// after `since_ms`: the lines after the last one stamped before it. That
/// line and the lines above it are the old process's last words; the
/// lines under it without a timestamp were written after it (an app that
/// stamps only its start, then logs its work with `console.log`). With no
/// line stamped before `since_ms`, every line counts: all of them come
/// after the offset.
pub fn lines_since(text: &str, since_ms: i64, offset_min: i64) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| parse_ts(l, offset_min).is_some_and(|t| t < since_ms))
        .map_or(0, |i| i + 1);
    lines[from..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64, m: i64, s: i64) -> i64 {
        civil_ms((2025, 11, 12), (h as i8, m as i8, s as i8, 0), 0).unwrap()
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_ts("2025-11-12T14:30:00.123Z INFO x", 0),
            Some(at(14, 30, 0) + 123)
        );
        assert_eq!(parse_ts("[2025-11-12 14:30:00] x", 0), Some(at(14, 30, 0)));
        assert_eq!(
            parse_ts("2025-11-12T15:30:00+01:00 x", 0),
            Some(at(14, 30, 0))
        );
        assert_eq!(
            parse_ts("2025-11-12 15:30:00,5 +0100 x", 0),
            Some(at(14, 30, 0) + 500)
        );
        assert_eq!(parse_ts("2025-11-12T15:30:00 x", 60), Some(at(14, 30, 0)));
        assert_eq!(parse_ts("    at foo (bar.js:1)", 0), None);
        assert_eq!(parse_ts("2025-13-12T15:30:00 x", 0), None);
    }

    #[test]
    fn patterns() {
        assert!(matches("WARN MCP tracking unavailable", "MCP.*unavailable"));
        assert!(!matches("WARN unavailable MCP", "MCP.*unavailable"));
        assert!(matches_ci("x ERROR y", "error"));
        assert_eq!(
            number_after("spawn ok duration_ms=120 x", "duration_ms="),
            Some(120.0)
        );
        assert_eq!(since_offset("abc\ndef\n", 4), "def\n");
        assert_eq!(since_offset("abc\n", 40), "abc\n");
    }

    #[test]
    fn windows_and_buckets() {
        let now = at(14, 30, 0);
        let mut text = String::new();
        // 6 minutes of traffic, one spawn and one upload line every 10 s;
        // uploads fail in the last 3 minutes only.
        for i in (1..=36).rev() {
            let t = crate::clock::Utc::at(now - i * 10_000).rfc3339();
            text.push_str(&format!("{t} INFO spawn ok duration_ms=100\n"));
            if i <= 18 {
                text.push_str(&format!("{t} ERROR upload failed duration_ms=300\n"));
            } else {
                text.push_str(&format!("{t} INFO upload ok duration_ms=100\n"));
            }
        }
        text.push_str("    at stack (x.js:1)\n");
        let ev = events(&text, 0);
        assert_eq!(ev.len(), 72);
        // The trace line is part of the last entry, not an entry of its own.
        assert!(ev.last().unwrap().1.ends_with("at stack (x.js:1)"));
        let m = Matcher {
            error: "error".into(),
            features: vec!["spawn".into(), "upload".into()],
            duration_key: "duration_ms=".into(),
        };
        let s = window(&ev, now, 300_000, 5, &m);
        assert_eq!(s.events, 60);
        assert_eq!(s.errors, 18);
        assert_eq!(s.features, vec![(30, 0), (30, 18)]);
        assert_eq!(s.buckets_above(5.0, true), 3);
        assert!(!s.sustained(5.0, true));
        let s3 = window(&ev, now, 180_000, 3, &m);
        assert!(s3.sustained(5.0, true));
        assert!((s.mean_duration().unwrap() - (42.0 * 100.0 + 18.0 * 300.0) / 60.0).abs() < 1e-9);
        assert_eq!(lines_since(&text, now - 10_000, 0).len(), 3);
        // Only the start is stamped: what follows it counts.
        let t = crate::clock::Utc::at(now - 60_000).rfc3339();
        let started = format!("old ERROR x\n{t} server started\nERROR a\nINFO b\n");
        assert_eq!(lines_since(&started, now, 0), ["ERROR a", "INFO b"]);
        assert_eq!(lines_since("ERROR a\n", now, 0), ["ERROR a"]);
    }

    #[test]
    fn untimed_entries_are_told_from_continuations() {
        let text = "2025-11-12T14:30:00Z INFO start\nTypeError: x\n    at f (a.js:1)\nCaused by: y\nINFO upload ok\n";
        assert_eq!(untimed_entries(text, 100, 0), 2);
        assert_eq!(untimed_entries(text, 2, 0), 1);
        assert!(is_continuation("    at f (a.js:1)"));
        assert!(!is_continuation("ERROR upload failed"));
    }

    #[test]
    fn a_log_without_timestamps_is_read_from_its_tail() {
        let mut text = String::new();
        for i in 0..300 {
            // Old errors first, then 100 lines with 20 errors.
            let bad = if i < 200 { i % 2 == 0 } else { i % 5 == 0 };
            text.push_str(if bad {
                "ERROR request failed\n"
            } else {
                "INFO ok\n"
            });
        }
        assert!(events(&text, 0).is_empty());
        let ev = tail(&text, 100, 1_000);
        assert_eq!(ev.len(), 100);
        let m = Matcher {
            error: "error".into(),
            features: Vec::new(),
            duration_key: String::new(),
        };
        let s = window(&ev, 1_000, 300_000, 1, &m);
        assert_eq!((s.events, s.errors), (100, 20));
        assert!(s.sustained(5.0, true));
    }
}
