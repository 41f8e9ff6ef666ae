//! What the checkout is on, read from `.git` files (reads are real in every
//! mode, dry runs included, unlike `git` commands).

use rewind_sdk::prelude::*;

/// Where HEAD points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// On a branch (`ref: refs/heads/<name>`).
    Branch(String),
    /// Detached at a commit.
    Detached(String),
}

impl Head {
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if let Some(r) = t.strip_prefix("ref:") {
            let r = r.trim();
            return Some(Self::Branch(
                r.strip_prefix("refs/heads/").unwrap_or(r).to_string(),
            ));
        }
        is_sha(t).then(|| Self::Detached(t.to_string()))
    }
}

pub fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The sha of `name` in `packed-refs` text, peeled when the file gives the
/// peeled commit of an annotated tag (`^<sha>` on the next line).
pub fn packed(text: &str, full: &str) -> Option<String> {
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((sha, name)) = line.split_once(' ') else {
            continue;
        };
        if name.trim() == full && is_sha(sha) {
            if let Some(peeled) = lines.peek().and_then(|l| l.strip_prefix('^'))
                && is_sha(peeled.trim())
            {
                return Some(peeled.trim().to_string());
            }
            return Some(sha.to_string());
        }
    }
    None
}

pub struct Repo {
    git_dir: String,
}

impl Repo {
    pub fn new(root: &str) -> Self {
        Self {
            git_dir: format!("{root}/.git"),
        }
    }

    fn read(&self, rel: &str) -> Option<String> {
        storage::read_to_string(&format!("{}/{rel}", self.git_dir)).ok()
    }

    pub fn head(&self) -> Result<Head> {
        let text = storage::read_to_string(&format!("{}/HEAD", self.git_dir))
            .context(format!("reading {}/HEAD", self.git_dir))?;
        Head::parse(&text).ok_or_else(|| {
            Failure::new(format!(
                "{}/HEAD holds neither a ref nor a commit: {:?}",
                self.git_dir,
                text.trim()
            ))
        })
    }

    fn full_ref(&self, full: &str) -> Option<String> {
        if let Some(t) = self.read(full) {
            let t = t.trim();
            if is_sha(t) {
                return Some(t.to_string());
            }
            if let Some(r) = t.strip_prefix("ref:") {
                return self.full_ref(r.trim());
            }
        }
        packed(&self.read("packed-refs")?, full)
    }

    /// The commit a ref name points to, as `git checkout <name>` would take
    /// it: a branch, then a tag, then a full ref or a sha. `None` when the
    /// files do not say (a loose annotated tag, an abbreviated sha).
    pub fn resolve(&self, name: &str) -> Option<String> {
        if is_sha(name) {
            return Some(name.to_string());
        }
        for full in [
            format!("refs/heads/{name}"),
            format!("refs/tags/{name}"),
            name.to_string(),
        ] {
            if let Some(sha) = self.full_ref(&full) {
                return Some(sha);
            }
        }
        None
    }

    /// HEAD as `branch (sha7)` or `detached at sha7`, and its commit.
    pub fn head_described(&self) -> Result<(Head, String, Option<String>)> {
        let head = self.head()?;
        Ok(match &head {
            Head::Branch(b) => {
                let sha = self.resolve(b);
                let shown = match &sha {
                    Some(s) => format!("{b} ({})", &s[..7]),
                    None => b.clone(),
                };
                (head, shown, sha)
            }
            Head::Detached(s) => {
                let shown = format!("detached at {}", &s[..7]);
                let sha = Some(s.clone());
                (head, shown, sha)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_packed_refs() {
        assert_eq!(
            Head::parse("ref: refs/heads/refactor/phase-0-baseline\n"),
            Some(Head::Branch("refactor/phase-0-baseline".into()))
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(Head::parse(sha), Some(Head::Detached(sha.into())));
        assert_eq!(Head::parse("garbage"), None);
        let peeled = "89abcdef0123456789abcdef0123456789abcdef";
        let text = format!(
            "# pack-refs with: peeled fully-peeled sorted\n{sha} refs/heads/main\n{sha} refs/tags/v1\n^{peeled}\n"
        );
        assert_eq!(packed(&text, "refs/heads/main").as_deref(), Some(sha));
        assert_eq!(packed(&text, "refs/tags/v1").as_deref(), Some(peeled));
        assert_eq!(packed(&text, "refs/tags/v2"), None);
    }
}
