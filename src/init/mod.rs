//! `couponsd init [DIR]`: a starter installation a newcomer can run at once. It writes
//! `couponsd.yaml` (the embedded SQLite default, two campaigns, one webhook channel with
//! a secret of its own) and the shipped rules with their tests, so that `couponsd check`,
//! `couponsd migrate` and `couponsd run` work from that folder with nothing else set up.
//!
//! The rules are the files in the source tree's `rules/`, built into the binary
//! ([`shipped`]): one source for the repository, the demo, the Debian package and
//! `init`. Nothing is overwritten unless asked (`--force`): a newcomer's edited rules
//! are worth more than a starter.

pub mod shipped;

use std::path::{Path, PathBuf};

use base64::Engine;

/// The starter config; `@SECRET@` is replaced by a key made for this folder.
const STARTER: &str = include_str!("starter.yaml");

/// The file `init` writes the config to, in `DIR`.
pub const CONFIG_FILE: &str = "couponsd.yaml";

/// `couponsd init` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The folder to write to; made when missing.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// Why `init` wrote nothing, or not everything.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Files `init` would write exist already, and `--force` was not given.
    #[error(
        "init: refusing to overwrite {} (nothing was written; --force overwrites them)",
        list(.0)
    )]
    Exists(Vec<PathBuf>),
    /// A file or folder could not be written.
    #[error("init: {}: {source}", .path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Writes the starter config and the shipped rules into `args.dir`; returns what to
/// print: the files written and the commands to run next.
pub fn run(args: &InitArgs) -> Result<String, InitError> {
    let dir = &args.dir;
    let files: Vec<(PathBuf, String)> = std::iter::once((dir.join(CONFIG_FILE), starter_config()))
        .chain(
            shipped::FILES
                .iter()
                .map(|(name, text)| (dir.join(name), (*text).to_owned())),
        )
        .collect();
    if !args.force {
        let existing: Vec<PathBuf> = files
            .iter()
            .filter(|(path, _)| path.symlink_metadata().is_ok())
            .map(|(path, _)| path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(InitError::Exists(existing));
        }
    }
    for (path, text) in &files {
        write(path, text)?;
    }
    Ok(summary(dir, &files))
}

/// The starter config with a signing key of its own: a published example key would be
/// a key anyone could sign with.
pub fn starter_config() -> String {
    let key: [u8; 32] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    STARTER.replace("@SECRET@", &secret)
}

fn write(path: &Path, text: &str) -> Result<(), InitError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| InitError::Write { path, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed(parent))?;
    }
    std::fs::write(path, text).map_err(failed(path))
}

fn summary(dir: &Path, files: &[(PathBuf, String)]) -> String {
    let mut out = format!(
        "couponsd init: a starter installation in {}\n",
        dir.display()
    );
    for (path, _) in files {
        out.push_str(&format!("  wrote {}\n", path.display()));
    }
    out.push_str("next:\n");
    if dir != Path::new(".") {
        out.push_str(&format!("  cd {}\n", dir.display()));
    }
    out.push_str(
        "  couponsd check      # the config, the rules and their tests; needs no database\n\
         \x20 couponsd migrate    # creates couponsd.db (SQLite) and applies the campaigns\n\
         \x20 couponsd run        # the daemon; metrics on http://127.0.0.1:9464/metrics\n",
    );
    out
}

#[cfg(test)]
mod tests;
