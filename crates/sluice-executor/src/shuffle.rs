//! This executor's map outputs, the service that serves them to peers, and the client that
//! fetches other executors' blocks.

use crate::{Executor, MAX_MESSAGE_BYTES};
use sluice_core::MapOutputId;
use sluice_net::{AuthChannel, Security};
use sluice_proto::shuffle_client::ShuffleClient;
use sluice_proto::{FetchChunk, FetchRequest};
use sluice_sql::MapOutput;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

const CHUNK_BYTES: usize = 1024 * 1024;
/// A peer that stopped answering (a SIGSTOPped process keeps its sockets open) must not hold a
/// reducer forever: past this, the fetch fails and the map output is recomputed.
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct ShuffleStore {
    outputs: Mutex<HashMap<MapOutputId, Arc<MapOutput>>>,
    clients: Mutex<HashMap<String, ShuffleClient<AuthChannel>>>,
    security: Security,
}

impl ShuffleStore {
    pub fn new(security: Security) -> Self {
        ShuffleStore {
            outputs: Mutex::default(),
            clients: Mutex::default(),
            security,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.lock().unwrap().is_empty()
    }

    pub fn put(&self, key: MapOutputId, output: MapOutput) {
        self.outputs.lock().unwrap().insert(key, Arc::new(output));
    }

    pub fn get(&self, key: &MapOutputId) -> Option<Arc<MapOutput>> {
        self.outputs.lock().unwrap().get(key).cloned()
    }

    /// Drops a job's outputs of batches up to `up_to_batch` (they are committed).
    pub fn release(&self, job_id: &str, up_to_batch: u64) {
        self.outputs
            .lock()
            .unwrap()
            .retain(|k, _| !(k.job == job_id && k.batch <= up_to_batch));
    }

    pub fn clear(&self) {
        self.outputs.lock().unwrap().clear();
    }

    pub fn client(&self, address: &str) -> Result<ShuffleClient<AuthChannel>, String> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let channel = self
            .security
            .channel_lazy(address)
            .map_err(|e| e.to_string())?;
        let client = ShuffleClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Forgets a peer's connection after a failure, so the next fetch dials again.
    pub fn forget(&self, address: &str) {
        self.clients.lock().unwrap().remove(address);
    }
}

pub struct ShuffleService {
    pub executor: Arc<Executor>,
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<FetchChunk, Status>> + Send>>;

#[tonic::async_trait]
impl sluice_proto::shuffle_server::Shuffle for ShuffleService {
    type FetchStream = ChunkStream;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        let key = requested(&r);
        let output = self.executor.store.get(&key).ok_or_else(|| {
            Status::not_found(format!("no shuffle output for {key:?} on this executor"))
        })?;
        let block =
            tokio::task::spawn_blocking(move || output.block(r.reduce_partition, &r.range_bounds))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
        let chunks: Vec<Result<FetchChunk, Status>> = block
            .chunks(CHUNK_BYTES)
            .map(|c| Ok(FetchChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// Reads one block from a peer (or from this executor's own store).
pub async fn fetch_block(
    executor: &Executor,
    self_id: &str,
    owner: &str,
    address: &str,
    request: FetchRequest,
) -> Result<Vec<u8>, String> {
    if owner == self_id {
        let key = requested(&request);
        let output = executor
            .store
            .get(&key)
            .ok_or_else(|| format!("local shuffle output {key:?} is gone"))?;
        return output
            .block(request.reduce_partition, &request.range_bounds)
            .map_err(|e| e.to_string());
    }
    let mut client = executor.store.client(address)?;
    let fetch = async {
        let mut stream = client.fetch(request).await?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        Ok::<_, Status>(data)
    };
    let result = tokio::time::timeout(FETCH_DEADLINE, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no complete answer within {} s",
                FETCH_DEADLINE.as_secs()
            )))
        });
    result.map_err(|s| {
        executor.store.forget(address);
        format!("fetch from {address}: {}", s.message())
    })
}

/// The map output a fetch asks for.
fn requested(r: &FetchRequest) -> MapOutputId {
    MapOutputId {
        job: r.job_id.clone().into(),
        batch: r.batch_id,
        stage: r.stage_id,
        stage_attempt: r.stage_attempt,
        partition: r.map_partition,
    }
}
