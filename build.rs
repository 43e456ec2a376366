//! Build-time facts for `jobrunner --version`: the git commit the binary was built
//! from (`unknown` outside a git checkout, e.g. a source tarball) and the schema
//! version, the newest migration's number. Migrations are embedded with
//! `sqlx::migrate!`, so a change there also rebuilds.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rustc-env=JOBRUNNER_GIT_COMMIT={}", git_commit());
    println!(
        "cargo:rustc-env=JOBRUNNER_SCHEMA_VERSION={}",
        schema_version()
    );
}

/// The short commit id of HEAD; `unknown` when there is no git or no repository.
fn git_commit() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    commit
}

/// The largest `NNNN_name.sql` prefix under migrations/.
fn schema_version() -> i64 {
    std::fs::read_dir("migrations")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}
