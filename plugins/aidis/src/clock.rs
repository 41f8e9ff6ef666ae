//! Wall-clock time (WASI's clock) in the formats the runbook uses:
//! `date +%Y%m%d_%H%M%S`, `date +%s` and `date`, all in UTC (through the
//! SDK's `clock`, on the `jiff` date library).

use rewind_sdk::clock;

pub fn now_s() -> u64 {
    u64::try_from(clock::now_s()).unwrap_or(0)
}

fn at(secs: u64) -> clock::Timestamp {
    clock::at_ms(i64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

/// `20250920_183005`, as `date +%Y%m%d_%H%M%S` in UTC.
pub fn stamp(secs: u64) -> String {
    clock::format(at(secs), "%Y%m%d_%H%M%S")
}

/// `Sat Sep 20 18:30:05 UTC 2025`, as `date` prints it in UTC.
pub fn date(secs: u64) -> String {
    clock::format(at(secs), "%a %b %e %H:%M:%S UTC %Y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_date() {
        assert_eq!(stamp(1_758_393_005), "20250920_183005");
        assert_eq!(date(1_758_393_005), "Sat Sep 20 18:30:05 UTC 2025");
    }
}
