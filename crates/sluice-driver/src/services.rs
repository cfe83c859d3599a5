//! The driver's gRPC services: executors attach here, the CLI manages jobs here.

use crate::core::{CoreHandle, CoreMsg};
use crate::jobs::Registry;
use sluice_core::ExecutorId;
use sluice_proto::driver_message::Kind as DriverKind;
use sluice_proto::executor_message::Kind as ExecKind;
use sluice_proto::{
    BatchDetail, ClusterRequest, ClusterStatus, DriverMessage, ExecutorMessage, GetBatchRequest,
    GetRequest, JobStatus, ListRequest, ListResponse, Registered, StopRequest, StopResponse,
    SubmitRequest, SubmitResponse,
};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct DriverService {
    pub core: CoreHandle,
    pub heartbeat_interval: Duration,
}

type DriverStream = Pin<Box<dyn futures::Stream<Item = Result<DriverMessage, Status>> + Send>>;

#[tonic::async_trait]
impl sluice_proto::driver_server::Driver for DriverService {
    type AttachStream = DriverStream;

    async fn attach(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<DriverStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(ExecutorMessage {
                kind: Some(ExecKind::Register(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be Register",
                ));
            }
        };
        if register.executor_id.is_empty() || register.shuffle_address.is_empty() {
            return Err(Status::invalid_argument(
                "Register needs executor_id and shuffle_address",
            ));
        }
        let (tx, rx) = mpsc::channel(1024);
        tx.send(Ok(DriverMessage {
            kind: Some(DriverKind::Registered(Registered {
                heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            })),
        }))
        .await
        .map_err(|_| Status::internal("stream closed"))?;
        let id = ExecutorId::from(register.executor_id);
        self.core
            .send(CoreMsg::Register {
                id: id.clone(),
                address: register.shuffle_address,
                slots: register.slots,
                outbound: tx,
            })
            .await;
        let core = self.core.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => match msg.kind {
                        Some(ExecKind::Heartbeat(_)) => {
                            core.send(CoreMsg::Heartbeat { id: id.clone() }).await
                        }
                        Some(ExecKind::Result(result)) => {
                            core.send(CoreMsg::Result {
                                executor: id.clone(),
                                result,
                            })
                            .await
                        }
                        Some(ExecKind::Draining(_)) => {
                            core.send(CoreMsg::Draining { id: id.clone() }).await
                        }
                        Some(ExecKind::Register(_)) | None => {}
                    },
                    Ok(None) => break "control stream closed".to_string(),
                    Err(e) => break format!("control stream failed: {}", e.message()),
                }
            };
            core.send(CoreMsg::Lost { id, reason }).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The gRPC status that says what went wrong: the request's content (invalid argument), the
/// driver's storage or network (unavailable: try again), or a bug (internal).
fn status_of(f: sluice_core::Failure) -> Status {
    use sluice_core::FailureKind as K;
    match f.kind {
        K::BadInput | K::BadPlan => Status::invalid_argument(f.message),
        K::Outage | K::LostExecutor => Status::unavailable(f.message),
        K::Bug => Status::internal(f.message),
    }
}

pub struct JobsService {
    pub registry: Registry,
}

#[tonic::async_trait]
impl sluice_proto::jobs_server::Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let r = request.into_inner();
        let origin = if r.origin.is_empty() {
            "job.sql".to_string()
        } else {
            r.origin
        };
        let job_ids = if r.resume_job_id.is_empty() {
            self.registry.submit_file(r.sql, origin).await
        } else {
            self.registry
                .resume(&r.resume_job_id, r.sql, origin)
                .await
                .map(|id| vec![id])
        }
        .map_err(status_of)?;
        Ok(Response::new(SubmitResponse {
            job_id: job_ids[0].clone(),
            job_ids,
        }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Ok(Response::new(ListResponse {
            jobs: self.registry.list(),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<JobStatus>, Status> {
        let id = request.into_inner().job_id;
        self.registry
            .get(&id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no job '{id}'")))
    }

    async fn get_batch(
        &self,
        request: Request<GetBatchRequest>,
    ) -> Result<Response<BatchDetail>, Status> {
        let r = request.into_inner();
        let detail = self.registry.batch(&r.job_id, r.batch_id).await?;
        Ok(Response::new(detail))
    }

    async fn cluster(&self, _: Request<ClusterRequest>) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.registry.cluster().await))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        let id = request.into_inner().job_id;
        let state = self
            .registry
            .stop(&id)
            .await
            .ok_or_else(|| Status::not_found(format!("no job '{id}'")))?;
        Ok(Response::new(StopResponse {
            state: sluice_proto::JobState::from(state).into(),
        }))
    }
}
