//! Opening object stores by URI. One code path for every scheme: `file://` (or a plain path)
//! and `s3://bucket/prefix`. S3 settings come from the standard AWS_* environment variables
//! (AWS_ENDPOINT_URL for a self-hosted server, AWS_ALLOW_HTTP=true for plain http, AWS_REGION,
//! AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); requests are path-style unless
//! AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true, and transient errors are retried with backoff.

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("invalid storage URI '{uri}': {reason}")]
pub struct UriError {
    pub uri: String,
    pub reason: String,
}

/// A store and the prefix inside it that a URI points at.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub uri: String,
}

impl Location {
    pub fn child(&self, part: &str) -> Path {
        Path::from_iter(self.prefix.parts().chain(Path::from(part).parts()))
    }

    /// The local directory this location points at, when it is on the local filesystem.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        self.uri
            .strip_prefix("file://")
            .map(std::path::PathBuf::from)
    }

    /// The URI of a path inside this location, for messages.
    pub fn uri_of(&self, path: &Path) -> String {
        let rel: Vec<_> = path
            .prefix_match(&self.prefix)
            .map(|p| p.map(|x| x.as_ref().to_string()).collect())
            .unwrap_or_default();
        if rel.is_empty() {
            self.uri.clone()
        } else {
            format!("{}/{}", self.uri.trim_end_matches('/'), rel.join("/"))
        }
    }
}

pub fn open(uri: &str) -> Result<Location, UriError> {
    let err = |reason: &str| UriError {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let local = if let Some(rest) = uri.strip_prefix("file://") {
        rest.to_string()
    } else if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err("expected s3://bucket/prefix"));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| err(&e.to_string()))?;
        return Ok(Location {
            store: crate::faults::FaultyStore::wrap_from_env(Arc::new(store)),
            prefix: Path::from(key.trim_end_matches('/')),
            uri: uri.trim_end_matches('/').to_string(),
        });
    } else if uri.contains("://") {
        let scheme = uri.split("://").next().unwrap_or_default();
        return Err(err(&format!(
            "unsupported scheme '{scheme}://' (use file://, s3:// or a path)"
        )));
    } else {
        uri.to_string()
    };
    let abs = std::path::absolute(&local).map_err(|e| err(&e.to_string()))?;
    let prefix = Path::from_absolute_path(&abs).map_err(|e| err(&e.to_string()))?;
    Ok(Location {
        store: crate::faults::FaultyStore::wrap_from_env(Arc::new(LocalFileSystem::new())),
        prefix,
        uri: format!("file://{}", abs.display()),
    })
}

/// Deletes the staging files a crash left behind under a local `uri`: object_store's
/// LocalFileSystem writes `<name>#<n>` and renames it into place, so a process killed mid-write
/// leaves one (invisible to listings, but taking space). Only files older than `older_than`
/// go, so that a write in flight is never touched. Object stores need nothing: their puts are
/// atomic and leave no partial object. Returns how many files were deleted.
pub fn clean_staging(uri: &str, older_than: std::time::Duration) -> std::io::Result<usize> {
    let Ok(loc) = open(uri) else { return Ok(0) };
    let Some(root) = loc.uri.strip_prefix("file://") else {
        return Ok(0);
    };
    let mut deleted = 0;
    let mut dirs = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let staging = name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= older_than);
            if staging && old {
                std::fs::remove_file(entry.path())?;
                tracing::info!(file = %entry.path().display(), "deleted a leftover staging file");
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn old_staging_files_are_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("jobs/j/offsets");
        std::fs::create_dir_all(&sub).unwrap();
        let write = |name: &str, age_s: u64| {
            let p = sub.join(name);
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
                .unwrap();
        };
        write("3#17", 3600);
        write("4#18", 0);
        write("5", 3600);
        write("notes#draft", 3600);
        let uri = dir.path().to_str().unwrap();
        assert_eq!(clean_staging(uri, Duration::from_secs(600)).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["4#18", "5", "notes#draft"]);
        assert_eq!(clean_staging("s3://bucket/x", Duration::ZERO).unwrap(), 0);
    }
}
