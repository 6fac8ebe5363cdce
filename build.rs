//! Stamps the binary with the git commit it was built from (`datapack_worker_build_info`).
//!
//! `src/app.rs` reads DATAPACK_WORKER_GIT_COMMIT with `option_env!`; a build from a tarball or
//! without git says "unknown" rather than failing. An explicit DATAPACK_WORKER_GIT_COMMIT in the
//! environment (a CI or container build without `.git`) wins.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DATAPACK_WORKER_GIT_COMMIT");
    let commit = std::env::var("DATAPACK_WORKER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DATAPACK_WORKER_GIT_COMMIT={commit}");

    // Rebuild when HEAD moves: HEAD itself changes on checkout, the branch ref on commit
    // (loose or packed). Paths come from git so worktrees (where .git is a file) work too.
    // Only existing paths: Cargo reruns a build script on every build if one is missing.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
        let mut watched = vec![format!("{git_dir}/HEAD"), format!("{common}/packed-refs")];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(format!("{common}/{reference}"));
        }
        for path in watched {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    // Without any rerun-if-changed line Cargo would rerun on every source change; keep the
    // script's own changes as a trigger too.
    println!("cargo:rerun-if-changed=build.rs");
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}
