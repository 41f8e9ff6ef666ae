//! Version ordering like `sort -V`, and reading git refs from the files of
//! a repository (so that `plan` and dry runs, which run no command, still
//! name the real tag).

use std::cmp::Ordering;

/// `sort -V`: runs of digits compare as numbers, everything else as text.
pub fn cmp_version(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(rb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

/// Tags from `packed-refs`: (name, commit). A peeled line (`^sha`) after an
/// annotated tag gives the commit it points to.
pub fn packed_tags(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(peeled) = line.strip_prefix('^') {
            if let Some(last) = out.last_mut() {
                last.1 = peeled.trim().to_string();
            }
            continue;
        }
        if let Some((sha, name)) = line.split_once(' ')
            && let Some(tag) = name.trim().strip_prefix("refs/tags/")
        {
            out.push((tag.to_string(), sha.to_string()));
        }
    }
    out
}

/// The newest tag (by `sort -V`) whose name contains `pattern`
/// (`git tag --list | grep stable | tail -1`), skipping tags on `head`.
pub fn last_matching<'a>(
    tags: &'a [(String, String)],
    pattern: &str,
    head: Option<&str>,
) -> Option<&'a (String, String)> {
    let mut matching: Vec<&(String, String)> =
        tags.iter().filter(|(n, _)| n.contains(pattern)).collect();
    matching.sort_by(|a, b| cmp_version(&a.0, &b.0));
    matching
        .into_iter()
        .rev()
        .find(|(_, sha)| head.is_none_or(|h| h != sha))
}

/// The version the app should serve for `tag`, from the `served_version`
/// template: `{tag}` is the tag (`v1.0.0-stable`), `{version}` the tag
/// without its leading `v` (`1.0.0-stable`), `{semver}` its first dotted
/// number (`1.0.0`). `*` stays, for [`glob`].
pub fn served(template: &str, tag: &str) -> String {
    let version = tag.strip_prefix('v').unwrap_or(tag);
    template
        .replace("{tag}", tag)
        .replace("{version}", version)
        .replace("{semver}", semver(tag))
}

/// The first run of digits and dots in `s` that starts with a digit, without
/// a trailing dot (`v1.0.0-stable` -> `1.0.0`); `s` when it has none.
pub fn semver(s: &str) -> &str {
    let Some(start) = s.find(|c: char| c.is_ascii_digit()) else {
        return s;
    };
    let rest = &s[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.')
}

/// `text` matches `pattern`, where `*` matches any text (also none) and
/// everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_version_templates() {
        let tag = "v1.0.0-stable";
        assert_eq!(served("{version}", tag), "1.0.0-stable");
        assert_eq!(served("{tag}", tag), "v1.0.0-stable");
        assert_eq!(served("v{semver}", tag), "v1.0.0");
        assert_eq!(served("{semver}", "release-2.10.3."), "2.10.3");
        assert!(glob("v{semver}", "v{semver}"));
        assert!(glob("1.0.0*", "1.0.0-stable+build.7"));
        assert!(glob("*1.0.0*", "app v1.0.0 (abc)"));
        assert!(!glob("1.0.0*", "v1.0.0"));
        assert!(!glob("1.0.0", "1.0.0-stable"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn sorts_like_sort_v() {
        let mut v = vec!["v1.10.0-stable", "v1.2.0-stable", "v1.0.0-stable", "v0.9.0"];
        v.sort_by(|a, b| cmp_version(a, b));
        assert_eq!(
            v,
            ["v0.9.0", "v1.0.0-stable", "v1.2.0-stable", "v1.10.0-stable"]
        );
    }

    #[test]
    fn picks_the_last_stable_tag_not_on_head() {
        let packed = "# pack-refs with: peeled fully-peeled sorted\naaa refs/tags/v1.0.0-stable\nbbb refs/tags/v1.1.0-stable\n^ccc\nddd refs/heads/main\n";
        let tags = packed_tags(packed);
        assert_eq!(tags[1], ("v1.1.0-stable".to_string(), "ccc".to_string()));
        assert_eq!(
            last_matching(&tags, "stable", None).unwrap().0,
            "v1.1.0-stable"
        );
        assert_eq!(
            last_matching(&tags, "stable", Some("ccc")).unwrap().0,
            "v1.0.0-stable"
        );
        assert!(last_matching(&tags, "nope", None).is_none());
    }
}
