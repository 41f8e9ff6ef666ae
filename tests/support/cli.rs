//! How the seed plugins' tests call the CLI.

/// The arguments for `rewind`, with `--approve destructive` after the
/// commands that run steps (`run`, `drill`, `resume`, `watch`): these
/// tests are about what each plugin does at every level, destructive ones
/// included, not about the approval gate that `[policy]` puts before them
/// (tests/e2e and each seed's `escalation.rs` cover that gate).
pub fn approving(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if args
        .first()
        .is_some_and(|c| matches!(*c, "run" | "drill" | "resume" | "watch"))
        && !args.contains(&"--dry-run")
    {
        out.insert(1, "--approve".into());
        out.insert(2, "destructive".into());
    }
    out
}
