//! The `rewind` command line. Errors are printed with their causes and a
//! documented exit code (see `rewind --help` and docs/runbook.md).

fn main() {
    std::process::exit(rewind::cli::main());
}
