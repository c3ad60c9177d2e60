//! The Node.js clients some channels' tests drive (socket.io-client, pusher-js), installed by
//! `scripts/services up node`.

use std::path::PathBuf;

use crate::Skip;

/// `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`), checked to hold `package`.
///
/// # Errors
/// A [`Skip`] naming what to run when the variable is unset or the package is not installed.
pub fn node_dir(package: &str) -> Result<PathBuf, Skip> {
    let dir = std::env::var("EVOLUTION_TEST_NODE_DIR").map_err(|_| {
        Skip::new(
            "set EVOLUTION_TEST_NODE_DIR (run `scripts/services up node`, then eval \"$(scripts/services env)\")",
        )
    })?;
    let dir = PathBuf::from(dir);
    if !dir.join("node_modules").join(package).is_dir() {
        return Err(Skip::new(format!(
            "{} has no node_modules/{package}: run `scripts/services up node`",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Copies the repository's `tests/node/<name>` next to the installed node_modules (ES modules
/// resolve packages from the script's own directory) and returns its path there. The copy is
/// renamed into place, so tests running at once never see half a script.
///
/// # Errors
/// As [`node_dir`], or a [`Skip`] naming the file that could not be copied.
pub fn node_script(package: &str, name: &str) -> Result<PathBuf, Skip> {
    let dir = node_dir(package)?.join("scripts");
    std::fs::create_dir_all(&dir).map_err(|e| Skip::new(format!("{}: {e}", dir.display())))?;
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/node")
        .join(name);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!("{name}.{}.{nanos}.tmp", std::process::id()));
    std::fs::copy(&source, &tmp).map_err(|e| Skip::new(format!("{}: {e}", source.display())))?;
    let target = dir.join(name);
    std::fs::rename(&tmp, &target).map_err(|e| Skip::new(format!("{}: {e}", target.display())))?;
    Ok(target)
}
