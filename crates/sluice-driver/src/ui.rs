//! The web UI's window on the driver: [`sluice_ui::ClusterView`] over the job registry.

use crate::jobs::Registry;
use sluice_proto::{BatchDetail, ClusterStatus, JobStatus};
use sluice_sql::CompiledJob;
use sluice_ui::{ClusterView, JobPlan, NotFound, OperatorPlan};

impl ClusterView for Registry {
    /// With their recent batches, which `list` leaves out: the jobs page shows each rate.
    fn jobs(&self) -> Vec<JobStatus> {
        self.list()
            .iter()
            .filter_map(|s| self.get(&s.job_id))
            .collect()
    }

    fn job(&self, job_id: &str) -> Option<JobStatus> {
        self.get(job_id)
    }

    fn batches(&self, job_id: &str) -> Vec<BatchDetail> {
        self.batch_log(job_id)
    }

    async fn batch(&self, job_id: &str, batch: u64) -> Result<BatchDetail, NotFound> {
        Registry::batch(self, job_id, batch)
            .await
            .map_err(|s| NotFound(s.message().to_string()))
    }

    async fn cluster(&self) -> ClusterStatus {
        Registry::cluster(self).await
    }

    fn plan(&self, job_id: &str) -> Option<JobPlan> {
        Registry::plan(self, job_id).map(|p| (*p).clone())
    }

    async fn checkpoint(&self, job_id: &str) -> Result<serde_json::Value, NotFound> {
        match self.describe_checkpoint(job_id).await {
            None => Err(NotFound(format!("no job '{job_id}'"))),
            Some(Ok(doc)) => Ok(doc),
            Some(Err(e)) => Err(NotFound(format!("cannot read the checkpoint: {e:#}"))),
        }
    }

    async fn stop(&self, job_id: &str) -> Option<sluice_core::JobState> {
        Registry::stop(self, job_id).await
    }
}

/// The plan page's view of a compiled job: its stages and each stateful operator's rules.
pub fn job_plan(job: &CompiledJob) -> JobPlan {
    let operators = job
        .fragments
        .iter()
        .enumerate()
        .filter_map(|(stage, f)| {
            let op = f.operator.as_ref()?;
            let plan = OperatorPlan {
                name: op.name().to_string(),
                describe: op.describe(),
                eviction: op.eviction(),
                windowed: op.windowed(),
            };
            Some((stage as u32, plan))
        })
        .collect();
    JobPlan {
        stages: job.stage_specs(),
        operators,
        sink: job.sink_table.clone(),
        event_times: job.event_times.clone(),
        watermark_policy: job.settings.watermark_policy,
    }
}
