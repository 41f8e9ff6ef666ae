//! Builds the test plugins for `wasm32-wasip2` and writes their paths to
//! `$OUT_DIR/artifacts.rs` (modeled on wasmtime's
//! `crates/test-programs/artifacts/build.rs`).
//!
//! The plugins are built into `<workspace>/target/plugins`, a fixed
//! directory rather than `OUT_DIR`, so the builds are cached across test
//! runs and shared with `examples/demo/demo.sh`, which runs the same
//! command.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant, package, library file name)
const PLUGINS: &[(&str, &str, &str)] = &[
    ("DEMO", "rewind-plugin-demo", "rewind_plugin_demo"),
    ("AIDIS", "rewind-plugin-aidis", "rewind_plugin_aidis"),
    (
        "FEATURE_FLAGS",
        "rewind-plugin-feature-flags",
        "rewind_plugin_feature_flags",
    ),
    (
        "AIVILLAGE",
        "rewind-plugin-aivillage",
        "rewind_plugin_aivillage",
    ),
    ("ABATHUR", "rewind-plugin-abathur", "rewind_plugin_abathur"),
    (
        "QUEUE_APP",
        "rewind-plugin-queue-app",
        "rewind_plugin_queue_app",
    ),
    ("FIXTURE", "rewind-fixture", "rewind_fixture"),
    ("FUTURE", "rewind-fixture-future", "rewind_fixture_future"),
    ("PAST", "rewind-fixture-past", "rewind_fixture_past"),
    ("HOSTILE", "rewind-hostile", "rewind_hostile"),
    ("MISTYPED", "rewind-mistyped", "rewind_mistyped"),
];

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // tests/artifacts -> the workspace root
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/artifacts lives two levels below the workspace root")
        .to_path_buf();
    let target_dir = root.join("target").join("plugins");

    for dir in [
        "wit",
        "sdk",
        "plugins",
        "tests/plugins",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    for (_, package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    // Settings of the outer build that must not leak into this one: flags
    // meant for the host target, another target dir or target, clippy's
    // wrapper, profile overrides (the plugin profile inherits from release).
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = matches!(
            key,
            "CARGO_ENCODED_RUSTFLAGS"
                | "RUSTFLAGS"
                | "CARGO_BUILD_RUSTFLAGS"
                | "CARGO_TARGET_DIR"
                | "CARGO_BUILD_TARGET"
                | "CARGO_BUILD_TARGET_DIR"
                | "CARGO_PRIMARY_PACKAGE"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER"
                | "CLIPPY_ARGS"
                | "CARGO_INCREMENTAL"
        ) || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || (key.starts_with("CARGO_TARGET_") && key.ends_with("_RUSTFLAGS"));
        if leaks {
            cmd.env_remove(key);
        }
    }

    let out = cmd
        .output()
        .expect("running cargo to build the test plugins");
    if !out.status.success() {
        panic!(
            "building the test plugins failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    // A second build of the fixture with a visible difference (its no-op
    // steps answer "v2"), for the hot-reload tests.
    let v2_dir = root.join("target").join("plugins-v2");
    let mut v2 = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    v2.current_dir(&root)
        .args([
            "build",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
            "-p",
            "rewind-fixture",
        ])
        .arg("--target-dir")
        .arg(&v2_dir)
        .env("REWIND_FIXTURE_FLAVOR", "v2");
    for (key, _) in env::vars_os() {
        if let Some(key) = key.to_str()
            && cmd.get_envs().any(|(k, v)| k == key && v.is_none())
        {
            v2.env_remove(key);
        }
    }
    let out = v2.output().expect("running cargo to build the v2 fixture");
    if !out.status.success() {
        panic!(
            "building the v2 fixture failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut src = String::new();
    let v2_wasm = v2_dir
        .join(TARGET)
        .join(PROFILE)
        .join("rewind_fixture.wasm");
    writeln!(
        src,
        "/// The fixture built with `REWIND_FIXTURE_FLAVOR=v2` (hot-reload tests)."
    )
    .unwrap();
    writeln!(
        src,
        "pub const FIXTURE_V2: &str = {:?};",
        v2_wasm.display().to_string()
    )
    .unwrap();
    for (name, package, file) in PLUGINS {
        let wasm = target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{file}.wasm"));
        let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
        assert!(
            bytes.starts_with(b"\0asm\x0d\0\x01\0"),
            "{} is not a WebAssembly component",
            wasm.display()
        );
        writeln!(src, "/// The `{package}` component.").unwrap();
        writeln!(
            src,
            "pub const {name}: &str = {:?};",
            wasm.display().to_string()
        )
        .unwrap();
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out_dir.join("artifacts.rs"), src).expect("writing artifacts.rs");
}
