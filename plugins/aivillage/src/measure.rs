//! Measuring: each component's health and latency, the downtime the
//! plugin keeps, and the runbook's decision matrix applied to them.

use std::time::{SystemTime, UNIX_EPOCH};

use rewind_sdk::prelude::*;
use serde::{Deserialize, Serialize};

use crate::COMPONENTS;
use crate::config::*;

/// One component's health, measured now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Health {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) healthy: bool,
    pub(crate) status: Option<u16>,
    /// Median of three probes when it answers healthy, else the one probe.
    pub(crate) latency_ms: f64,
    pub(crate) detail: String,
}

pub(crate) fn measure(cfg: &Config, c: &Component) -> Result<Health> {
    let probe = cfg.health(c);
    let first = probe.probe()?;
    let mut latency = first.latency_ms();
    if first.healthy {
        // One slow answer on a busy machine is not a degradation: take the
        // median of three.
        let mut l = vec![latency];
        for _ in 0..2 {
            let r = probe.probe()?;
            l.push(if r.healthy { r.latency_ms() } else { f64::MAX });
        }
        l.sort_by(|a, b| a.total_cmp(b));
        latency = l[1];
    }
    let detail = match first.status {
        Some(s) => format!("{s} {}", one_line(&first.body, 120)),
        None => first.detail.clone(),
    };
    Ok(Health {
        name: c.name.to_string(),
        url: c.health_url.clone(),
        healthy: first.healthy && latency < f64::MAX,
        status: first.status,
        latency_ms: latency,
        detail,
    })
}

pub(crate) fn measure_all(cfg: &Config) -> Result<Vec<Health>> {
    cfg.components.iter().map(|c| measure(cfg, c)).collect()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The runbook's severities, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Tier {
    Low,
    Medium,
    High,
    Critical,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// The decision matrix applied to the measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Decision {
    /// Components failing their health check.
    pub(crate) failed: Vec<String>,
    /// Components answering, but more than the minor degradation slower
    /// than the baseline.
    pub(crate) degraded: Vec<String>,
    pub(crate) impact_percent: f64,
    pub(crate) downtime_ms: u64,
    /// Worst latency over the baseline, in percent (negative: faster).
    pub(crate) degradation_percent: f64,
    pub(crate) by_impact: Tier,
    pub(crate) by_downtime: Tier,
    pub(crate) by_degradation: Tier,
    pub(crate) tier: Tier,
}

impl Decision {
    /// The components level 1 isolates, in restart order.
    pub(crate) fn to_isolate(&self) -> Vec<String> {
        COMPONENTS
            .iter()
            .filter(|c| self.failed.iter().chain(&self.degraded).any(|f| f == *c))
            .map(|c| c.to_string())
            .collect()
    }
}

/// Pure: the tiers from the measurements (unit-tested natively).
pub(crate) fn decide(
    raw: &RawConfig,
    health: &[Health],
    down_since: &[(String, u64)],
    now: u64,
) -> Decision {
    let failed: Vec<String> = health
        .iter()
        .filter(|h| !h.healthy)
        .map(|h| h.name.clone())
        .collect();
    let limit = raw.degraded_above_ms();
    let degraded: Vec<String> = health
        .iter()
        .filter(|h| h.healthy && h.latency_ms > limit)
        .map(|h| h.name.clone())
        .collect();
    let affected = failed.len() + degraded.len();
    let impact = if health.is_empty() {
        0.0
    } else {
        affected as f64 * 100.0 / health.len() as f64
    };
    let downtime = down_since
        .iter()
        .filter(|(n, _)| failed.contains(n))
        .map(|(_, t)| now.saturating_sub(*t))
        .max()
        .unwrap_or(0);
    let worst = health
        .iter()
        .filter(|h| h.healthy)
        .map(|h| h.latency_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let degradation = if worst.is_finite() {
        (worst - raw.baseline_latency_ms) * 100.0 / raw.baseline_latency_ms
    } else {
        0.0
    };
    let by_impact = if impact > raw.critical_impact_percent {
        Tier::Critical
    } else if impact >= raw.high_impact_percent {
        Tier::High
    } else if affected > 0 {
        Tier::Medium
    } else {
        Tier::Low
    };
    let by_downtime = if failed.is_empty() {
        Tier::Low
    } else if downtime > raw.critical_downtime_ms {
        Tier::Critical
    } else if downtime >= raw.high_downtime_ms {
        Tier::High
    } else {
        Tier::Medium
    };
    let by_degradation = if degradation > raw.critical_degradation_percent {
        Tier::Critical
    } else if degradation >= raw.minor_degradation_percent {
        Tier::High
    } else {
        Tier::Low
    };
    let tier = by_impact.max(by_downtime).max(by_degradation);
    Decision {
        failed,
        degraded,
        impact_percent: impact,
        downtime_ms: downtime,
        degradation_percent: degradation,
        by_impact,
        by_downtime,
        by_degradation,
        tier,
    }
}

pub(crate) fn down_key(name: &str) -> String {
    format!("down_since:{name}")
}

/// Remember when each failing component was first seen failing; forget
/// the healthy ones. Returns (component, first seen) of the failing ones.
pub(crate) fn track_downtime(health: &[Health], now: u64) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for h in health {
        let key = down_key(&h.name);
        let since = storage::get(&key)?.and_then(|v| v.parse::<u64>().ok());
        if h.healthy {
            if since.is_some() {
                storage::delete(&key)?;
            }
        } else {
            let since = match since {
                Some(t) => t,
                None => {
                    storage::set(&key, &now.to_string())?;
                    now
                }
            };
            out.push((h.name.clone(), since));
        }
    }
    Ok(out)
}

/// Measure, track downtime and decide.
pub(crate) fn assess_now(cfg: &Config) -> Result<(Vec<Health>, Decision)> {
    let health = measure_all(cfg)?;
    let now = now_ms();
    let down = track_downtime(&health, now)?;
    let d = decide(&cfg.raw, &health, &down, now);
    Ok((health, d))
}

pub(crate) fn health_findings(cfg: &Config, health: &[Health]) -> Vec<Finding> {
    let mut out = Vec::new();
    for h in health {
        out.push(Finding::status(
            format!("{}: GET {}", h.name, h.url),
            h.status,
            200,
            399,
        ));
        if h.healthy {
            out.push(Finding::at_most(
                format!("{}: latency (median of 3)", h.name),
                (h.latency_ms * 10.0).round() / 10.0,
                cfg.degraded_above_ms(),
                "ms",
            ));
        }
    }
    out
}

pub(crate) fn decision_findings(raw: &RawConfig, d: &Decision, total: usize) -> Vec<Finding> {
    let affected: Vec<&String> = d.failed.iter().chain(&d.degraded).collect();
    let names = if affected.is_empty() {
        "none".to_string()
    } else {
        affected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        Finding::new(
            "users affected (share of components failing health or degraded)",
            format!(
                "{:.0}% ({} of {total}: {names}) -> {}",
                d.impact_percent,
                affected.len(),
                d.by_impact.as_str()
            ),
            format!(
                "< {:.0}% medium, {:.0}-{:.0}% high (isolate), > {:.0}% critical (full rollback)",
                raw.high_impact_percent,
                raw.high_impact_percent,
                raw.critical_impact_percent,
                raw.critical_impact_percent
            ),
            d.by_impact >= Tier::High,
        ),
        Finding::new(
            "downtime (since a failing component was first seen failing)",
            format!("{} -> {}", fmt_ms(d.downtime_ms), d.by_downtime.as_str()),
            format!(
                "< {} medium, {}-{} high, > {} critical (full rollback)",
                fmt_ms(raw.high_downtime_ms),
                fmt_ms(raw.high_downtime_ms),
                fmt_ms(raw.critical_downtime_ms),
                fmt_ms(raw.critical_downtime_ms)
            ),
            d.by_downtime >= Tier::High,
        ),
        Finding::new(
            format!(
                "performance vs baseline {} ms (worst answering component)",
                raw.baseline_latency_ms
            ),
            if d.failed.len() == total {
                "no component answers: not measurable -> low".to_string()
            } else {
                format!(
                    "{:+.0}% -> {}",
                    d.degradation_percent,
                    d.by_degradation.as_str()
                )
            },
            format!(
                "< +{:.0}% no rollback, > +{:.0}% critical (full rollback)",
                raw.minor_degradation_percent, raw.critical_degradation_percent
            ),
            d.by_degradation >= Tier::High,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        serde_json::from_str("{}").unwrap()
    }

    fn h(name: &str, healthy: bool, latency: f64) -> Health {
        Health {
            name: name.into(),
            url: format!("http://x/{name}"),
            healthy,
            status: Some(if healthy { 200 } else { 500 }),
            latency_ms: latency,
            detail: String::new(),
        }
    }

    fn all(bad: &[&str], latency: f64) -> Vec<Health> {
        COMPONENTS
            .iter()
            .map(|c| h(c, !bad.contains(c), latency))
            .collect()
    }

    #[test]
    fn the_decision_matrix() {
        let r = raw();
        let now = 10 * 60_000;
        // Healthy and fast: low.
        let d = decide(&r, &all(&[], 5.0), &[], now);
        assert_eq!(d.tier, Tier::Low);
        // One of four failing (25% of users), just seen: high, isolate it.
        let d = decide(&r, &all(&["p2p"], 5.0), &[("p2p".into(), now)], now);
        assert_eq!((d.tier, d.to_isolate()), (Tier::High, vec!["p2p".into()]));
        // Two of four is 50%: still high (critical is > 50%).
        let d = decide(&r, &all(&["p2p", "rag"], 5.0), &[], now);
        assert_eq!(d.tier, Tier::High);
        assert_eq!(d.to_isolate(), vec!["p2p".to_string(), "rag".to_string()]);
        // Three of four: critical.
        let d = decide(&r, &all(&["gateway", "p2p", "rag"], 5.0), &[], now);
        assert_eq!(d.tier, Tier::Critical);
        // One failing for more than 5 minutes: critical by downtime.
        let d = decide(
            &r,
            &all(&["rag"], 5.0),
            &[("rag".into(), now - 6 * 60_000)],
            now,
        );
        assert_eq!(
            (d.by_impact, d.by_downtime, d.tier),
            (Tier::High, Tier::Critical, Tier::Critical)
        );
        // Performance: 40% over the baseline is degraded (high), 60% is critical.
        let d = decide(&r, &all(&[], 140.0), &[], now);
        assert_eq!(d.tier, Tier::Critical, "all four degraded is 100% of users");
        let mut hs = all(&[], 5.0);
        hs[3].latency_ms = 140.0;
        let d = decide(&r, &hs, &[], now);
        assert_eq!((d.by_degradation, d.tier), (Tier::High, Tier::High));
        assert_eq!(d.degraded, vec!["rag".to_string()]);
        hs[3].latency_ms = 160.0;
        assert_eq!(decide(&r, &hs, &[], now).by_degradation, Tier::Critical);
        // Under 25% slower: no rollback.
        hs[3].latency_ms = 120.0;
        assert_eq!(decide(&r, &hs, &[], now).tier, Tier::Low);
    }
}
