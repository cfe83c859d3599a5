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
