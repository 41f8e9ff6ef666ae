//! Editing a dotenv file the way Level 1 needs: the flag's existing line is
//! rewritten where it is, later definitions of the same flag are dropped
//! (dotenv lets the last one win, so a stale `=true` further down would
//! undo the toggle), a flag that is not there yet is appended under the
//! runbook's comment, and every other line stays byte for byte.

/// One `KEY=value` line, as dotenv reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<'a> {
    /// Leading whitespace and `export `, kept when the line is rewritten.
    pub prefix: &'a str,
    pub key: &'a str,
    pub value: String,
}

/// Parse a line (without its line ending); `None` for blanks, comments and
/// anything that is not an assignment.
pub fn parse_line(line: &str) -> Option<Assignment<'_>> {
    let body = line.trim_start();
    let indent = &line[..line.len() - body.len()];
    if body.starts_with('#') {
        return None;
    }
    let (prefix_len, rest) = match body.strip_prefix("export ") {
        Some(rest) => {
            let rest_trimmed = rest.trim_start();
            (indent.len() + body.len() - rest_trimmed.len(), rest_trimmed)
        }
        None => (indent.len(), body),
    };
    let (key, value) = rest.split_once('=')?;
    let key = key.trim_end();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(Assignment {
        prefix: &line[..prefix_len],
        key,
        value: unquote(value),
    })
}

/// A value as dotenv reads it: quotes removed, or an unquoted value cut at
/// ` #` (an inline comment) and trimmed.
fn unquote(raw: &str) -> String {
    let v = raw.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q)
            && let Some(end) = inner.find(q)
        {
            return inner[..end].to_string();
        }
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    }
}

/// Split text into lines, each with its line ending (`\n`, `\r\n` or none
/// for a last line without one).
fn lines_with_endings(text: &str) -> Vec<(&str, &str)> {
    text.split_inclusive('\n')
        .map(|l| {
            if let Some(s) = l.strip_suffix("\r\n") {
                (s, "\r\n")
            } else if let Some(s) = l.strip_suffix('\n') {
                (s, "\n")
            } else {
                (l, "")
            }
        })
        .collect()
}

/// What happened to one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagEdit {
    pub flag: String,
    /// 1-based line of the definition that was kept (in the new file), or
    /// where it was appended.
    pub line: usize,
    /// Its value before (`None` when the flag was not in the file).
    pub before: Option<String>,
    /// Later definitions of the same flag that were removed.
    pub duplicates_removed: usize,
}

impl FlagEdit {
    pub fn describe(&self, value: &str) -> String {
        let mut s = match &self.before {
            None => format!("{}: appended ={value} at line {}", self.flag, self.line),
            Some(b) if b == value && self.duplicates_removed == 0 => {
                format!("{}: already ={value} at line {}", self.flag, self.line)
            }
            Some(b) => format!("{}: line {} {b} -> {value}", self.flag, self.line),
        };
        if self.duplicates_removed > 0 {
            s.push_str(&format!(
                " ({} later duplicate line{} removed)",
                self.duplicates_removed,
                if self.duplicates_removed == 1 {
                    ""
                } else {
                    "s"
                }
            ));
        }
        s
    }
}

/// The result of setting flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub text: String,
    pub edits: Vec<FlagEdit>,
    /// Lines that are neither a flag's definition nor added here.
    pub untouched: usize,
}

impl Rewrite {
    pub fn changed(&self, original: &str) -> bool {
        self.text != original
    }
}

/// Set every flag in `flags` to `value`: rewrite the first definition in
/// place, drop later ones, append missing flags under `# {header}`.
pub fn set_flags(original: &str, flags: &[String], value: &str, header: &str) -> Rewrite {
    let lines = lines_with_endings(original);
    let eol = if lines.first().is_some_and(|(_, e)| *e == "\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = String::with_capacity(original.len() + 128);
    let mut edits: Vec<FlagEdit> = Vec::new();
    let mut untouched = 0;
    let mut out_line = 0;
    for (content, ending) in &lines {
        let assignment = parse_line(content).filter(|a| flags.iter().any(|f| f == a.key));
        match assignment {
            Some(a) => {
                if let Some(e) = edits.iter_mut().find(|e| e.flag == a.key) {
                    e.duplicates_removed += 1;
                    continue;
                }
                out_line += 1;
                let ending = if ending.is_empty() { eol } else { ending };
                let value_now = a.value.clone();
                let rewritten = if value_now == value && content.ends_with(value) {
                    content.to_string()
                } else {
                    format!("{}{}={value}", a.prefix, a.key)
                };
                out.push_str(&rewritten);
                out.push_str(ending);
                edits.push(FlagEdit {
                    flag: a.key.to_string(),
                    line: out_line,
                    before: Some(value_now),
                    duplicates_removed: 0,
                });
            }
            None => {
                out_line += 1;
                untouched += 1;
                out.push_str(content);
                out.push_str(ending);
            }
        }
    }
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !edits.iter().any(|e| &e.flag == *f))
        .collect();
    if !missing.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str("# ");
        out.push_str(header);
        out.push_str(eol);
        out_line += 1;
        for f in missing {
            out_line += 1;
            out.push_str(&format!("{f}={value}{eol}"));
            edits.push(FlagEdit {
                flag: f.clone(),
                line: out_line,
                before: None,
                duplicates_removed: 0,
            });
        }
    }
    // Report in the order the flags were asked for.
    edits.sort_by_key(|e| flags.iter().position(|f| *f == e.flag));
    Rewrite {
        text: out,
        edits,
        untouched,
    }
}

/// Every definition of `flag`: (1-based line, value).
pub fn definitions(text: &str, flag: &str) -> Vec<(usize, String)> {
    lines_with_endings(text)
        .iter()
        .enumerate()
        .filter_map(|(i, (content, _))| {
            parse_line(content)
                .filter(|a| a.key == flag)
                .map(|a| (i + 1, a.value))
        })
        .collect()
}

/// Whether a flag's value turns the feature off.
pub fn is_off(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "no" | "off"
    )
}

/// How many assignments the file holds.
pub fn count_settings(text: &str) -> usize {
    lines_with_endings(text)
        .iter()
        .filter(|(c, _)| parse_line(c).is_some())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<String> {
        [
            "ENABLE_PARALLEL_SPAWNING",
            "ENABLE_PARALLEL_UPLOADS",
            "ENABLE_MCP_TRACKING",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn rewrites_in_place_drops_duplicates_appends_missing() {
        let env = "# app\nNODE_ENV=production\nENABLE_PARALLEL_SPAWNING=true\nexport ENABLE_PARALLEL_UPLOADS = \"true\" # on\nPORT=3000\nENABLE_PARALLEL_SPAWNING=yes\nLOG_LEVEL=info";
        let r = set_flags(
            env,
            &flags(),
            "false",
            "Emergency feature toggles (2025-11-12)",
        );
        assert_eq!(
            r.text,
            "# app\nNODE_ENV=production\nENABLE_PARALLEL_SPAWNING=false\nexport ENABLE_PARALLEL_UPLOADS=false\nPORT=3000\nLOG_LEVEL=info\n# Emergency feature toggles (2025-11-12)\nENABLE_MCP_TRACKING=false\n"
        );
        assert_eq!(r.untouched, 4);
        assert_eq!(r.edits[0].duplicates_removed, 1);
        assert_eq!(r.edits[0].before.as_deref(), Some("true"));
        assert_eq!(r.edits[1].before.as_deref(), Some("true"));
        assert_eq!(r.edits[2].before, None);
        assert_eq!(r.edits[2].line, 8);
        for f in flags() {
            assert_eq!(definitions(&r.text, &f).len(), 1, "{f}");
            assert!(is_off(&definitions(&r.text, &f)[0].1));
        }
        // Idempotent.
        let again = set_flags(&r.text, &flags(), "false", "x");
        assert_eq!(again.text, r.text);
        assert!(!again.changed(&r.text));
    }

    #[test]
    fn keeps_crlf_and_comments() {
        let env = "A=1\r\n# ENABLE_MCP_TRACKING=true\r\nENABLE_MCP_TRACKING=true\r\n";
        let r = set_flags(env, &flags()[2..], "false", "h");
        assert_eq!(
            r.text,
            "A=1\r\n# ENABLE_MCP_TRACKING=true\r\nENABLE_MCP_TRACKING=false\r\n"
        );
        assert_eq!(definitions("", "A"), vec![]);
        assert_eq!(
            set_flags("", &flags()[..1], "false", "h").text,
            "# h\nENABLE_PARALLEL_SPAWNING=false\n"
        );
    }
}
