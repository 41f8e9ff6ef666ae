//! Wall-clock time for plugins, in UTC (WASI's clock), on the `jiff` date
//! library: runbooks name backups and log lines with `date` formats, so
//! plugins format and parse the same ones instead of doing calendar
//! arithmetic of their own.

pub use jiff::Timestamp;

/// Now, in UTC.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    now().as_millisecond()
}

/// Seconds since the Unix epoch, now (`date +%s`).
pub fn now_s() -> i64 {
    now().as_second()
}

/// A point in time from milliseconds since the epoch (the epoch itself when
/// out of range).
pub fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Format in UTC with `strftime` directives, as `date -u +FORMAT` would:
/// `format(t, "%Y%m%d_%H%M%S")` -> `20250920_183005`.
pub fn format(t: Timestamp, fmt: &str) -> String {
    t.strftime(fmt).to_string()
}

/// `2025-09-20T18:30:05Z`.
pub fn rfc3339(t: Timestamp) -> String {
    format(t, "%Y-%m-%dT%H:%M:%SZ")
}

/// Milliseconds since the epoch of a civil date and time at a UTC offset
/// (minutes east), or `None` if the fields are not a real date and time.
pub fn civil_ms(
    (year, month, day): (i16, i8, i8),
    (hour, minute, second, millis): (i8, i8, i8, i32),
    offset_min: i32,
) -> Option<i64> {
    let dt = jiff::civil::DateTime::new(year, month, day, hour, minute, second, millis * 1_000_000)
        .ok()?;
    let offset = jiff::tz::Offset::from_seconds(offset_min.checked_mul(60)?).ok()?;
    Some(offset.to_timestamp(dt).ok()?.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_date() {
        let t = at_ms(1_758_393_005_250); // 2025-09-20T18:30:05.250Z, a Saturday
        assert_eq!(format(t, "%Y%m%d_%H%M%S"), "20250920_183005");
        assert_eq!(
            format(t, "%a %b %e %H:%M:%S UTC %Y"),
            "Sat Sep 20 18:30:05 UTC 2025"
        );
        assert_eq!(rfc3339(t), "2025-09-20T18:30:05Z");
        assert_eq!(
            civil_ms((2025, 9, 20), (18, 30, 5, 250), 0),
            Some(1_758_393_005_250)
        );
        assert_eq!(
            civil_ms((2025, 9, 20), (20, 30, 5, 250), 120),
            Some(1_758_393_005_250)
        );
        assert_eq!(civil_ms((2025, 2, 30), (0, 0, 0, 0), 0), None);
    }
}
