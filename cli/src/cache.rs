//! The exec plugin's cache of exchanged JWTs: one file per (issuer, audience, scopes, PAT),
//! mode 0600 in a 0700 directory under the user's cache directory, written atomically.
//! It holds the JWT and its expiry, never the PAT: the file name carries only a SHA-256 of
//! the inputs, so a new PAT in the same file starts a new entry.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::exchange::Exchanged;

/// A cached JWT is used only while it has at least this long to live, so kubectl never
/// sends one that expires in flight.
pub const FRESH_FOR: TimeDelta = TimeDelta::seconds(30);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    access_token: String,
    expires_at: DateTime<Utc>,
}

/// The user's cache directory for Patrol: `$XDG_CACHE_HOME/patrol`, else `~/.cache/patrol`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("patrol"))
}

/// Where the JWT for these inputs is cached.
pub fn entry_path(
    dir: &Path,
    issuer: &str,
    audience: Option<&str>,
    scopes: &[String],
    pat: &str,
) -> PathBuf {
    let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [issuer, audience.unwrap_or(""), &scopes.join(" "), pat] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join("credentials").join(format!("{hex}.json"))
}

/// The cached JWT at `path`, if it is still fresh at `now`.
pub fn read(path: &Path, now: DateTime<Utc>) -> Option<Exchanged> {
    let entry: Entry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    (entry.expires_at - FRESH_FOR > now).then_some(Exchanged {
        access_token: entry.access_token,
        expires_at: entry.expires_at,
        scope: None,
    })
}

/// Stores `jwt` at `path` (0600, directory 0700), replacing what was there in one rename.
pub fn write(path: &Path, jwt: &Exchanged) -> Result<()> {
    let dir = path.parent().context("cache path has no directory")?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating cache directory {}", dir.display()))?;
    // The cache directory is Patrol's own: narrow it even if something widened it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let entry = Entry {
        access_token: jwt.access_token.clone(),
        expires_at: jwt.expires_at,
    };
    crate::private::write(path, &serde_json::to_vec(&entry)?)
}

/// Forgets the cached JWT (after Patrol refused the PAT behind it).
pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("patrol-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn entries_are_keyed_by_every_input_and_never_name_the_pat() {
        let d = Path::new("/c");
        let base = entry_path(
            d,
            "https://i",
            Some("k8s"),
            &["a".into(), "b".into()],
            "patrol_1",
        );
        assert_eq!(
            base,
            entry_path(
                d,
                "https://i",
                Some("k8s"),
                &["b".into(), "a".into(), "a".into()],
                "patrol_1"
            ),
            "scope order and repeats do not matter"
        );
        for other in [
            entry_path(
                d,
                "https://j",
                Some("k8s"),
                &["a".into(), "b".into()],
                "patrol_1",
            ),
            entry_path(d, "https://i", None, &["a".into(), "b".into()], "patrol_1"),
            entry_path(d, "https://i", Some("k8s"), &["a".into()], "patrol_1"),
            entry_path(
                d,
                "https://i",
                Some("k8s"),
                &["a".into(), "b".into()],
                "patrol_2",
            ),
        ] {
            assert_ne!(base, other);
        }
        assert!(!base.to_string_lossy().contains("patrol_1"));
    }

    #[test]
    fn a_written_entry_is_private_and_read_back_while_fresh() {
        let d = dir("rw");
        let path = entry_path(&d, "https://i", None, &[], "patrol_1");
        let expires_at: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let jwt = Exchanged {
            access_token: "eyJ.x.y".into(),
            expires_at,
            scope: None,
        };
        write(&path, &jwt).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("patrol_1"), "{text}");

        let fresh = expires_at - TimeDelta::seconds(31);
        assert_eq!(
            read(&path, fresh).map(|j| j.access_token),
            Some("eyJ.x.y".into())
        );
        assert!(
            read(&path, expires_at - TimeDelta::seconds(30)).is_none(),
            "too close to expiry"
        );
        write(
            &path,
            &Exchanged {
                access_token: "eyJ.new".into(),
                ..jwt
            },
        )
        .unwrap();
        assert_eq!(
            read(&path, fresh).map(|j| j.access_token),
            Some("eyJ.new".into())
        );
        remove(&path);
        assert!(read(&path, fresh).is_none());
        fs::write(&path, "not json").unwrap();
        assert!(read(&path, fresh).is_none(), "a damaged entry is a miss");
        let _ = fs::remove_dir_all(&d);
    }
}
