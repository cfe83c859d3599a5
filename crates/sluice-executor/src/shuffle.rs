//! This executor's map outputs, the service that serves them to peers, and the client that
//! fetches other executors' blocks.

use crate::{Executor, MAX_MESSAGE_BYTES};
use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use sluice_connectors::IpcDecoder;
use sluice_core::MapOutputId;
use sluice_net::{AuthChannel, Security};
use sluice_proto::shuffle_client::ShuffleClient;
use sluice_proto::{BlockId, BlockPiece, FetchChunk, FetchRequest};
use sluice_sql::MapOutput;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Bytes per message of a fetch's answer.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Blocks asked of one peer in one request; a reducer of a very wide shuffle sends a few.
const BLOCKS_PER_REQUEST: usize = 4096;
/// Requests one reducer has open at once. With each answer flow-controlled by HTTP/2, this
/// bounds the bytes in flight towards one task (as Spark's `maxReqsInFlight` does).
const REQUESTS_IN_FLIGHT: usize = 8;
/// A peer that stopped answering (a SIGSTOPped process keeps its sockets open) must not hold a
/// reducer forever: past this without a piece of its answer, the fetch fails and the map
/// output is recomputed.
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
        let outputs = r
            .blocks
            .iter()
            .map(|b| {
                let key = map_output(&r.job_id, r.batch_id, b);
                self.executor.store.get(&key).ok_or_else(|| {
                    Status::not_found(format!("no shuffle output for {key:?} on this executor"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A small channel: blocks are cut (and range blocks encoded) only as fast as the
        // reducer reads them.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut packer = Packer::default();
            for (i, output) in outputs.iter().enumerate() {
                let chunks = match output.block(r.reduce_partition, &r.range_bounds) {
                    Ok(block) => packer.push(i as u32, block),
                    Err(e) => vec![Err(Status::internal(e.to_string()))],
                };
                for chunk in chunks {
                    let failed = chunk.is_err();
                    if tx.blocking_send(chunk).is_err() || failed {
                        return;
                    }
                }
            }
            if let Some(last) = packer.finish() {
                let _ = tx.blocking_send(Ok(last));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Packs blocks into messages of about `CHUNK_BYTES`: small blocks share one, a large one is
/// sliced over several (slices of the block's bytes, not copies).
#[derive(Default)]
struct Packer {
    pieces: Vec<BlockPiece>,
    bytes: usize,
}

impl Packer {
    /// Adds block `index`; returns the messages it filled.
    fn push(&mut self, index: u32, mut block: Bytes) -> Vec<Result<FetchChunk, Status>> {
        let mut full = Vec::new();
        loop {
            let room = CHUNK_BYTES - self.bytes;
            let data = block.split_to(room.min(block.len()));
            self.bytes += data.len();
            let last = block.is_empty();
            self.pieces.push(BlockPiece {
                block: index,
                data,
                last,
            });
            if self.bytes >= CHUNK_BYTES {
                full.extend(self.finish().map(Ok));
            }
            if last {
                return full;
            }
        }
    }

    fn finish(&mut self) -> Option<FetchChunk> {
        self.bytes = 0;
        let pieces = std::mem::take(&mut self.pieces);
        (!pieces.is_empty()).then_some(FetchChunk { pieces })
    }
}

/// Where a task's shuffle input lives: one map output of an upstream stage.
pub type Location = sluice_proto::MapOutputLocation;

/// A fetch that failed: the map output named and the error, for the task's fetch failure.
pub struct FetchError {
    pub location: Location,
    pub message: String,
}

/// Reads the blocks of reduce partition `reduce` of every map output in `locations`, decoded,
/// each with the stage that wrote it, in the order of `locations` (so a rerun sees its input
/// in the same order). Blocks held here are read in place; every peer gets one request for all
/// of its blocks (split past `BLOCKS_PER_REQUEST`), at most `REQUESTS_IN_FLIGHT` at a time.
pub async fn fetch_blocks(
    executor: &Executor,
    self_id: &str,
    job_id: &str,
    batch_id: u64,
    reduce: u32,
    range_bounds: &[Vec<u8>],
    locations: &[Location],
) -> Result<Vec<(u32, Vec<RecordBatch>)>, FetchError> {
    let mut blocks: Vec<Option<Vec<RecordBatch>>> = vec![None; locations.len()];
    let mut remote: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, loc) in locations.iter().enumerate() {
        if loc.executor_id != self_id {
            remote.entry(loc.executor_id.as_str()).or_default().push(i);
            continue;
        }
        let key = map_output(job_id, batch_id, &block_id(loc));
        let local = executor
            .store
            .get(&key)
            .ok_or_else(|| format!("local shuffle output {key:?} is gone"))
            .and_then(|o| o.rows(reduce, range_bounds).map_err(|e| e.to_string()));
        blocks[i] = Some(local.map_err(|message| FetchError {
            location: loc.clone(),
            message,
        })?);
    }
    let requests = remote
        .into_values()
        .flat_map(|indices| {
            indices
                .chunks(BLOCKS_PER_REQUEST)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .map(|indices| {
            let request = FetchRequest {
                job_id: job_id.to_string(),
                batch_id,
                reduce_partition: reduce,
                range_bounds: range_bounds.to_vec(),
                blocks: indices.iter().map(|i| block_id(&locations[*i])).collect(),
            };
            let peer = &locations[indices[0]];
            async move {
                let fetched = fetch_from_peer(executor, &peer.address, request).await;
                (indices, fetched.map_err(|message| (peer, message)))
            }
        });
    let mut done = futures::stream::iter(requests).buffer_unordered(REQUESTS_IN_FLIGHT);
    while let Some((indices, fetched)) = done.next().await {
        let fetched = fetched.map_err(|(peer, message)| FetchError {
            location: peer.clone(),
            message,
        })?;
        for (i, rows) in indices.into_iter().zip(fetched) {
            blocks[i] = Some(rows);
        }
    }
    Ok(locations
        .iter()
        .zip(blocks)
        .map(|(loc, rows)| (loc.stage_id, rows.unwrap_or_default()))
        .collect())
}

/// One request to a peer: its blocks, decoded, in the request's order.
async fn fetch_from_peer(
    executor: &Executor,
    address: &str,
    request: FetchRequest,
) -> Result<Vec<Vec<RecordBatch>>, String> {
    let mut client = executor.store.client(address)?;
    let n = request.blocks.len();
    let stalled = || {
        let secs = FETCH_DEADLINE.as_secs();
        Status::deadline_exceeded(format!("no answer for {secs} s"))
    };
    // A deadline on progress, not on the whole answer: a large one read slowly goes on as long
    // as pieces keep coming.
    let fetch = async {
        let answer = tokio::time::timeout(FETCH_DEADLINE, client.fetch(request));
        let mut stream = answer.await.map_err(|_| stalled())??.into_inner();
        let mut decoders: Vec<IpcDecoder> = (0..n).map(|_| IpcDecoder::default()).collect();
        let mut blocks: Vec<Option<Vec<RecordBatch>>> = vec![None; n];
        while let Some(chunk) = tokio::time::timeout(FETCH_DEADLINE, stream.message())
            .await
            .map_err(|_| stalled())??
        {
            for piece in chunk.pieces {
                let i = piece.block as usize;
                let decoder = decoders
                    .get_mut(i)
                    .ok_or_else(|| Status::internal(format!("a piece of unrequested block {i}")))?;
                let bad = |e: sluice_connectors::ConnectorError| Status::data_loss(e.to_string());
                decoder.push(piece.data).map_err(bad)?;
                if piece.last {
                    let decoder = std::mem::take(decoder);
                    blocks[i] = Some(decoder.finish().map_err(bad)?);
                }
            }
        }
        let missing = blocks.iter().filter(|b| b.is_none()).count();
        if missing > 0 {
            return Err(Status::data_loss(format!(
                "the answer ended with {missing} of {n} blocks incomplete"
            )));
        }
        Ok(blocks.into_iter().map(Option::unwrap_or_default).collect())
    };
    fetch.await.map_err(|s: Status| {
        executor.store.forget(address);
        format!("fetch from {address}: {}", s.message())
    })
}

fn block_id(loc: &Location) -> BlockId {
    BlockId {
        stage_id: loc.stage_id,
        stage_attempt: loc.stage_attempt,
        map_partition: loc.map_partition,
    }
}

/// The map output a requested block belongs to.
fn map_output(job: &str, batch: u64, b: &BlockId) -> MapOutputId {
    MapOutputId {
        job: job.into(),
        batch,
        stage: b.stage_id,
        stage_attempt: b.stage_attempt,
        partition: b.map_partition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassembled(chunks: Vec<FetchChunk>, n: usize) -> Vec<Vec<u8>> {
        let mut blocks = vec![Vec::new(); n];
        let mut ended = vec![false; n];
        for piece in chunks.into_iter().flat_map(|c| c.pieces) {
            assert!(!ended[piece.block as usize], "a piece after the last one");
            blocks[piece.block as usize].extend_from_slice(&piece.data);
            ended[piece.block as usize] = piece.last;
        }
        assert!(ended.iter().all(|e| *e), "every block ends");
        blocks
    }

    #[test]
    fn small_blocks_share_a_message_and_large_ones_span_several() {
        let blocks: Vec<Vec<u8>> = vec![
            vec![1; 10],
            Vec::new(),
            vec![2; CHUNK_BYTES * 2 + 5],
            vec![3; 7],
        ];
        let mut packer = Packer::default();
        let mut chunks = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let filled = packer.push(i as u32, Bytes::from(b.clone()));
            chunks.extend(filled.into_iter().map(|c| c.ok().unwrap()));
        }
        chunks.extend(packer.finish());
        assert_eq!(
            chunks.len(),
            3,
            "10 + 0 + 2 MiB + 5 + 7 bytes in 1 MiB messages"
        );
        assert!(
            chunks
                .iter()
                .all(|c| { c.pieces.iter().map(|p| p.data.len()).sum::<usize>() <= CHUNK_BYTES })
        );
        assert_eq!(chunks[0].pieces[0].data.len(), 10);
        assert!(chunks[0].pieces[1].data.is_empty() && chunks[0].pieces[1].last);
        assert_eq!(reassembled(chunks, blocks.len()), blocks);
        assert!(Packer::default().finish().is_none());
    }
}
