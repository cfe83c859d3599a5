//! Test only: an object store wrapper that fails some writes, switched on by the
//! `SLUICE_TEST_STORE_FAULTS` environment variable (`put=0.2,seed=7`: a fifth of all puts fail,
//! in an order fixed by the seed; `stall=0.1,stall_ms=800`: a tenth of the puts that go through
//! first wait 800 ms, as a slow store does). It lets tests prove that no batch commits after a failed write
//! and that recovery still produces exact output against a real store.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "SLUICE_TEST_STORE_FAULTS";

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// Failures per 1000 puts.
    put_per_mille: u64,
    /// Puts per 1000 that are delayed by `stall`.
    stall_per_mille: u64,
    stall: std::time::Duration,
    seed: u64,
    puts: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner` when the environment asks for faults.
    pub fn wrap_from_env(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let Ok(spec) = std::env::var(ENV) else {
            return inner;
        };
        let mut put = 0.0;
        let mut stall = 0.0;
        let mut stall_ms = 500;
        let mut seed = 0;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("put", v)) => put = v.trim().parse().unwrap_or(0.0),
                Some(("stall", v)) => stall = v.trim().parse().unwrap_or(0.0),
                Some(("stall_ms", v)) => stall_ms = v.trim().parse().unwrap_or(500),
                Some(("seed", v)) => seed = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        tracing::warn!("{ENV}={spec}: failing {put} of object store writes");
        Arc::new(FaultyStore {
            inner,
            put_per_mille: (put * 1000.0) as u64,
            stall_per_mille: (stall * 1000.0) as u64,
            stall: std::time::Duration::from_millis(stall_ms),
            seed,
            puts: AtomicU64::new(0),
        })
    }

    /// (fail, stall) for the next put, from its sequence number and the seed.
    fn next_fault(&self) -> (bool, bool) {
        let n = self.puts.fetch_add(1, Ordering::Relaxed);
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed);
        (
            h % 1000 < self.put_per_mille,
            (h / 1000) % 1000 < self.stall_per_mille,
        )
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (fail, stall) = self.next_fault();
        if fail {
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected write failure for {location}").into(),
            });
        }
        if stall {
            tracing::debug!(%location, "injected write stall");
            tokio::time::sleep(self.stall).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}
