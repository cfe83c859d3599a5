//! Exact, replayable descriptions of one source task's input. They are logged in the batch's
//! write-ahead offsets entry before any task runs, so a rerun reads exactly the same rows.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSplit {
    /// One whole file of a `files` source. A static table's files carry their ETag, so a
    /// rerun reads the version its batch logged or fails saying the file changed.
    File {
        uri: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e_tag: Option<String>,
    },
    /// Rows `[start, end)` of a `datagen` source.
    Datagen { start: u64, end: u64 },
    /// Offsets `[from, until)` of one Kafka topic-partition.
    Kafka {
        topic: String,
        partition: i32,
        from: i64,
        until: i64,
    },
}

impl SourceSplit {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("split serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
