//! Wall-clock time (WASI's clock) in the formats the runbook uses:
//! `date +%Y%m%d_%H%M%S`, `date +%s` and `date`, all in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    min: u64,
    sec: u64,
    weekday: usize,
}

fn parts(secs: u64) -> Parts {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil(days);
    Parts {
        year,
        month,
        day,
        hour: rem / 3600,
        min: rem % 3600 / 60,
        sec: rem % 60,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4).rem_euclid(7)) as usize,
    }
}

/// `20250920_183005`, as `date +%Y%m%d_%H%M%S` in UTC.
pub fn stamp(secs: u64) -> String {
    let p = parts(secs);
    format!(
        "{:04}{:02}{:02}_{:02}{:02}{:02}",
        p.year, p.month, p.day, p.hour, p.min, p.sec
    )
}

/// `Sat Sep 20 18:30:05 UTC 2025`, as `date` prints it in UTC.
pub fn date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(secs);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} UTC {}",
        DAYS[p.weekday],
        MONTHS[(p.month - 1) as usize],
        p.day,
        p.hour,
        p.min,
        p.sec,
        p.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_date() {
        // 2025-09-20 18:30:05 UTC, a Saturday.
        let t = 1_758_393_005;
        assert_eq!(stamp(t), "20250920_183005");
        assert_eq!(date(t), "Sat Sep 20 18:30:05 UTC 2025");
        assert_eq!(stamp(0), "19700101_000000");
        assert_eq!(date(0), "Thu Jan  1 00:00:00 UTC 1970");
        // A leap day.
        assert_eq!(stamp(951_782_400), "20000229_000000");
    }
}
