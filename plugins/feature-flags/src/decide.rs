//! The decisions a rollback acts on, pinned for the incident (see
//! `ctx.pin` in docs/writing-plugins.md): which flags Level 1 turns off,
//! Level 2's stable tag, and Level 3's pre-deployment backups, chosen
//! against the deployment time.

use rewind_sdk::prelude::*;
use rewind_sdk::report::num;
use rewind_sdk::storage::{DirEntry, EntryKind};
use serde::{Deserialize, Serialize};

use crate::clock::{Utc, now_ms};
use crate::config::{Config, Feature, file_name};
use crate::logscan;
use crate::measure::*;
use crate::state::*;
use crate::versions;

/// Level 1's choice. Features named in the config (`disable`) are the
/// operator's choice, read afresh; the failing ones found in the log are
/// decided once for the incident: once they are off, the log no longer
/// says which ones failed.
pub(crate) fn chosen_features(ctx: &Context, cfg: &Config) -> Result<(Vec<Feature>, String)> {
    let d = match cfg.features_to_disable_names()? {
        Some(names) if cfg.disable.trim() == "all" => Disable {
            names,
            why: "all feature flags (Level 1 of the runbook)".into(),
        },
        Some(names) => Disable {
            why: format!("the features named by disable = {:?}", cfg.disable),
            names,
        },
        None => pin_json(ctx, "disable", || {
            let text = read_opt(&cfg.log_file)?.unwrap_or_default();
            let (crit, _, _) = log_windows(cfg, &text, now_ms());
            let failing = failing_features(cfg, &crit);
            Ok(if failing.is_empty() {
                Disable {
                    names: cfg.features.iter().map(|f| f.name.clone()).collect(),
                    why: "no single feature is failing in the log, so all of them".into(),
                }
            } else {
                Disable {
                    why: format!(
                        "only the failing feature{} (failure rate above {}% in the last {})",
                        if failing.len() == 1 { "" } else { "s" },
                        num(cfg.partial_failure_pct),
                        minutes(cfg.critical_window_s)
                    ),
                    names: failing,
                }
            })
        })?,
    };
    // What this run disables, for its incident record.
    kv_set(ctx, "disable", &d)?;
    let feats = cfg
        .features
        .iter()
        .filter(|f| d.names.contains(&f.name))
        .cloned()
        .collect();
    Ok((feats, d.why))
}

/// Level 2's target: the newest `*-stable` tag below HEAD, decided once
/// for the incident. Decided again after the checkout it would be the tag
/// below the one checked out: a second run would go one release further
/// back.
pub(crate) fn stable_tag(ctx: &Context, cfg: &Config) -> Result<StableTag> {
    pin_json(ctx, "stable_tag", || decide_stable_tag(cfg))
}

pub(crate) fn decide_stable_tag(cfg: &Config) -> Result<StableTag> {
    let g = git_state(cfg)?;
    let mut candidates: Vec<String> = g
        .tags
        .iter()
        .filter(|(n, _)| n.contains(&cfg.stable_tag_pattern))
        .map(|(n, _)| n.clone())
        .collect();
    candidates.sort_by(|a, b| versions::cmp_version(a, b));
    let Some((tag, sha)) =
        versions::last_matching(&g.tags, &cfg.stable_tag_pattern, Some(&g.head_sha)).cloned()
    else {
        bail!(
            "no tag matching {:?} to roll back to in {} (HEAD {} is at {}; tags: {})",
            cfg.stable_tag_pattern,
            g.git_dir,
            g.head_name,
            sha12(&g.head_sha),
            if g.tags.is_empty() {
                "none".to_string()
            } else {
                g.tags
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    };
    let t = StableTag {
        tag,
        sha,
        candidates,
        head_before: format!("{} ({})", sha12(&g.head_sha), g.head_name),
        head_sha: g.head_sha.clone(),
    };
    Ok(t)
}

/// When the running release was deployed, and how that is known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Deployed {
    pub(crate) at_ms: i64,
    pub(crate) how: String,
}

/// The deployment time: `deployed_at` from the config, else the time HEAD
/// last moved to the deployed commit, from git's reflog (`.git/logs/HEAD`:
/// the checkout or commit that deployed it). The deployed commit is the
/// HEAD Level 2 left (pinned with the stable tag) once Level 2 ran, else
/// HEAD. `None` when neither tells.
pub(crate) fn deployment(ctx: &Context, cfg: &Config) -> Result<Option<Deployed>> {
    if let Some(at) = &cfg.deployed_at {
        let Some(ms) = logscan::parse_ts(at.trim(), cfg.log_utc_offset_min) else {
            bail!(
                "bad [plugin.config] of plugin {:?}: deployed_at = {at:?} is not a time like \"2025-11-12T14:00:00Z\"",
                ctx.plugin
            );
        };
        return Ok(Some(Deployed {
            at_ms: ms,
            how: format!("deployed_at = {at:?}"),
        }));
    }
    let Ok(g) = git_state(cfg) else {
        return Ok(None);
    };
    let sha = pinned_json::<StableTag>(ctx, "stable_tag")?
        .map(|t| t.head_sha)
        .filter(|s| !s.is_empty())
        .unwrap_or(g.head_sha);
    let Some(reflog) = read_opt(&format!("{}/logs/HEAD", g.git_dir))? else {
        return Ok(None);
    };
    // `<old> <new> <name> <<email>> <unix seconds> <zone>\t<message>`
    let found = reflog.lines().rev().find_map(|l| {
        let (who, msg) = l.split_once('\t').unwrap_or((l, ""));
        let f: Vec<&str> = who.split_whitespace().collect();
        if f.len() < 4 || f[1] != sha {
            return None;
        }
        let secs: i64 = f[f.len() - 2].parse().ok()?;
        Some((secs * 1000, msg.to_string()))
    });
    Ok(found.map(|(at_ms, msg)| Deployed {
        at_ms,
        how: format!(
            "HEAD moved to {} then: \"{}\" in .git/logs/HEAD",
            sha12(&sha),
            short(&msg, 80)
        ),
    }))
}

/// A backup to restore, and why that one.
pub(crate) struct Chosen {
    pub(crate) path: Option<String>,
    pub(crate) why: String,
    /// How many backups there were to choose from.
    pub(crate) candidates: usize,
}

/// The newest file in `dir` whose name ends with one of `suffixes` (like
/// `ls -t | head -1`; ties go to the later name) that was taken before the
/// deployment (the runbook's "Identify pre-deployment backup"): a backup
/// taken after it holds the broken release. When the deployment time is
/// not known, the newest, and the reason says so.
pub(crate) fn pre_deployment(
    dir: &str,
    suffixes: &[&str],
    deployed: Option<&Deployed>,
) -> Result<Chosen> {
    let mut all: Vec<DirEntry> = if exists(dir)? {
        storage::list_dir(dir, false)?
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter(|e| suffixes.iter().any(|s| e.path.ends_with(s)))
            .collect()
    } else {
        Vec::new()
    };
    all.sort_by(|a, b| {
        b.modified_ms
            .cmp(&a.modified_ms)
            .then_with(|| file_name(&b.path).cmp(file_name(&a.path)))
    });
    let names = |v: &[&DirEntry]| {
        v.iter()
            .map(|e| file_name(&e.path).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if all.is_empty() {
        return Ok(Chosen {
            path: None,
            why: format!("no {} in {dir}", suffixes.join(" or ")),
            candidates: 0,
        });
    }
    let Some(d) = deployed else {
        return Ok(Chosen {
            path: Some(all[0].path.clone()),
            why: format!(
                "the newest of {} in {dir}; the deployment time is not known (no deployed_at, no reflog entry for HEAD), so it may have been taken after the deployment",
                all.len()
            ),
            candidates: all.len(),
        });
    };
    let (after, before): (Vec<&DirEntry>, Vec<&DirEntry>) =
        all.iter().partition(|e| e.modified_ms as i64 >= d.at_ms);
    let when = Utc::at(d.at_ms).rfc3339();
    let skipped = if after.is_empty() {
        String::new()
    } else {
        format!(
            "; skipped {} taken after it: {}",
            after.len(),
            names(&after)
        )
    };
    Ok(match before.first() {
        Some(e) => Chosen {
            path: Some(e.path.clone()),
            why: format!(
                "the newest of {} in {dir} that predates the deployment at {when} ({}){skipped}",
                all.len(),
                d.how
            ),
            candidates: all.len(),
        },
        None => Chosen {
            path: None,
            why: format!(
                "none of the {} in {dir} predates the deployment at {when} ({}): {}; name one in the config to restore it anyway",
                all.len(),
                d.how,
                names(&after)
            ),
            candidates: all.len(),
        },
    })
}

pub(crate) fn app_backup(ctx: &Context, cfg: &Config) -> Result<Chosen> {
    match &cfg.app_backup {
        Some(p) => Ok(Chosen {
            path: Some(p.clone()),
            why: "named by app_backup".into(),
            candidates: 1,
        }),
        None => pre_deployment(
            &cfg.app_backups_dir,
            &[".tar.gz", ".tgz"],
            deployment(ctx, cfg)?.as_ref(),
        ),
    }
}

pub(crate) fn memory_backup(ctx: &Context, cfg: &Config) -> Result<Chosen> {
    match &cfg.memory_backup {
        Some(p) => Ok(Chosen {
            path: Some(p.clone()),
            why: "named by memory_backup".into(),
            candidates: 1,
        }),
        None => pre_deployment(
            &cfg.memory_backups_dir,
            &[".db", ".sqlite", ".sqlite3"],
            deployment(ctx, cfg)?.as_ref(),
        ),
    }
}

/// Level 3's choices, decided once for the incident: the newest tarball
/// and memory database backup when the incident starts (a backup taken
/// while it runs must not become the one a second run restores), and
/// where the failed tree goes (the first run's name, so that a second run
/// finds it moved aside already). The version the extracted backup
/// declares is this run's observation, kept next to it.
pub(crate) fn restore_choice(ctx: &Context, cfg: &Config) -> Result<Restore> {
    let mut r = pin_json(ctx, "restore", || {
        let (app, mem) = (app_backup(ctx, cfg)?, memory_backup(ctx, cfg)?);
        Ok(Restore {
            backup: app.path,
            backup_why: app.why,
            memory_refused: mem.path.is_none() && mem.candidates > 0,
            memory_backup: mem.path,
            memory_why: mem.why,
            failed_path: format!(
                "{}/{}-failed-{}",
                cfg.failed_dir(),
                file_name(&cfg.app_dir),
                run_stamp(ctx)?
            ),
            pkg_version: None,
        })
    })?;
    // Paths named in the config are the operator's choice, read afresh.
    if cfg.app_backup.is_some() {
        r.backup = cfg.app_backup.clone();
        r.backup_why = "named by app_backup".into();
    }
    if cfg.memory_backup.is_some() {
        r.memory_backup = cfg.memory_backup.clone();
        r.memory_why = "named by memory_backup".into();
    }
    r.pkg_version = kv_get(ctx, "pkg_version")?;
    Ok(r)
}
