//! Wall-clock time in UTC in the runbook's formats, through the SDK's
//! `clock` (the `jiff` date library).

use rewind_sdk::clock;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    clock::now_ms()
}

/// A point in time, formatted the ways the runbook writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc(clock::Timestamp);

impl Utc {
    pub fn at(ms: i64) -> Self {
        Self(clock::at_ms(ms))
    }

    /// `20251112-143512`, as `date +%Y%m%d-%H%M%S` writes it.
    pub fn stamp(&self) -> String {
        clock::format(self.0, "%Y%m%d-%H%M%S")
    }

    /// `2025-11-12`.
    pub fn date(&self) -> String {
        clock::format(self.0, "%Y-%m-%d")
    }

    /// `14:35:12 UTC`.
    pub fn time(&self) -> String {
        clock::format(self.0, "%H:%M:%S UTC")
    }

    /// `2025-11-12T14:35:12Z`.
    pub fn rfc3339(&self) -> String {
        clock::rfc3339(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_runbook() {
        // 2025-11-12T14:35:12.250Z
        let t = Utc::at(1_762_958_112_250);
        assert_eq!(t.stamp(), "20251112-143512");
        assert_eq!(t.date(), "2025-11-12");
        assert_eq!(t.rfc3339(), "2025-11-12T14:35:12Z");
        assert_eq!(t.time(), "14:35:12 UTC");
    }
}
