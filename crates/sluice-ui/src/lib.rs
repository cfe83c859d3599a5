//! The web UI, served by the driver on `--ui-listen`: server-rendered HTML pages with inline
//! SVG charts, each with a JSON twin under `/api/`, read from the driver's queryable model
//! through [`ClusterView`]. Everything it serves is inside the binary: the templates are
//! compiled in (askama) and the one script, which refreshes a page in place, is embedded.
//!
//! Security: with a cluster token every request but the login form needs it, as a bearer
//! header or as the HttpOnly cookie the login form sets; without one the UI listens on
//! loopback only (`Security::check_bind`), as gRPC does. It is read-only but for stopping a
//! job, which asks for confirmation and accepts only a same-origin POST.

mod auth;
mod charts;
mod job_views;
mod pages;

use axum::Router;
use axum::routing::get;
use sluice_net::Security;
use sluice_proto::{BatchDetail, ClusterStatus, JobStatus};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the UI reads and does, implemented by the driver over its job registry.
pub trait ClusterView: Send + Sync + 'static {
    /// Every job, in submission order.
    fn jobs(&self) -> Vec<JobStatus>;
    fn job(&self, job_id: &str) -> Option<JobStatus>;
    /// The batches the driver keeps for a job, oldest first, as they ended (a running batch
    /// without its tasks).
    fn batches(&self, job_id: &str) -> Vec<BatchDetail>;
    /// One batch in detail; a running one with its tasks as far as they got.
    fn batch(
        &self,
        job_id: &str,
        batch: u64,
    ) -> impl Future<Output = Result<BatchDetail, NotFound>> + Send;
    fn cluster(&self) -> impl Future<Output = ClusterStatus> + Send;
    /// The job's plan, when this driver compiled it (not for a job that ended before it
    /// started).
    fn plan(&self, job_id: &str) -> Option<JobPlan>;
    /// What the job's checkpoint holds, read from storage: the document
    /// `sluice checkpoint inspect --json` prints for one job.
    fn checkpoint(
        &self,
        job_id: &str,
    ) -> impl Future<Output = Result<serde_json::Value, NotFound>> + Send;
    /// Stops a job; `None` when there is no such job.
    fn stop(&self, job_id: &str) -> impl Future<Output = Option<sluice_core::JobState>> + Send;
}

/// A job's plan as the plan page shows it, from the job the driver compiled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobPlan {
    /// In topological order: a stage reads only stages with lower ids.
    pub stages: Vec<sluice_core::StageSpec>,
    /// Each stateful stage's operator, by stage id.
    pub operators: BTreeMap<u32, OperatorPlan>,
    pub sink: String,
    /// Per source table that declares a WATERMARK: its event-time column and delay.
    pub event_times: BTreeMap<String, sluice_core::watermark::EventTime>,
    pub watermark_policy: sluice_core::watermark::WatermarkPolicy,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OperatorPlan {
    /// Its name in the checkpoint's `state/` directory and in metrics (`agg-1`).
    pub name: String,
    pub describe: String,
    /// When its state rows leave the state, in words.
    pub eviction: String,
    /// Whether the watermark closes its state (windows, joins).
    pub windowed: bool,
}

/// A job or batch the driver does not have, with the driver's words for why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("ui_listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Refused(#[from] sluice_net::NetError),
}

/// The UI's shared state: the model it reads and the cluster's security.
struct Ui<V> {
    view: V,
    security: Security,
}

impl<V> Ui<V> {
    fn new(view: V, security: Security) -> Arc<Self> {
        Arc::new(Ui { view, security })
    }
}

/// Every route of the UI over `view`.
pub fn router<V: ClusterView>(view: V, security: Security) -> Router {
    let ui = Ui::new(view, security);
    let pages = Router::new()
        .route("/", get(pages::jobs::<V>))
        .route("/jobs/{job}", get(pages::job::<V>))
        .route("/jobs/{job}/batches/{batch}", get(pages::batch::<V>))
        .route(
            "/jobs/{job}/stop",
            get(pages::stop_confirm::<V>).post(pages::stop::<V>),
        )
        .route("/jobs/{job}/plan", get(job_views::plan::<V>))
        .route("/jobs/{job}/checkpoint", get(job_views::checkpoint::<V>))
        .route("/jobs/{job}/windows", get(job_views::windows::<V>))
        .route("/executors", get(pages::executors::<V>))
        .route("/api/jobs", get(pages::api_jobs::<V>))
        .route("/api/jobs/{job}", get(pages::api_job::<V>))
        .route(
            "/api/jobs/{job}/batches/{batch}",
            get(pages::api_batch::<V>),
        )
        .route("/api/jobs/{job}/plan", get(job_views::api_plan::<V>))
        .route(
            "/api/jobs/{job}/checkpoint",
            get(job_views::api_checkpoint::<V>),
        )
        .route("/api/jobs/{job}/windows", get(job_views::api_windows::<V>))
        .route("/api/executors", get(pages::api_executors::<V>))
        .route_layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            auth::require_token::<V>,
        ));
    Router::new()
        .route("/login", get(auth::login_form).post(auth::login::<V>))
        .route("/ui.js", get(pages::script))
        .route("/ui.css", get(pages::stylesheet))
        .merge(pages)
        .with_state(ui)
}

/// Binds `listen` (loopback only without a cluster token) and serves the UI in the
/// background; returns the bound address.
pub async fn serve<V: ClusterView>(
    listen: &str,
    view: V,
    security: Security,
) -> Result<SocketAddr, UiError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| UiError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| UiError::Listen {
        addr: listen.to_string(),
        source,
    })?;
    security.check_bind(addr, "ui_listen")?;
    let app = router(view, security);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("web UI stopped: {e}");
        }
    });
    Ok(addr)
}
