//! Exact, replayable descriptions of one source task's input. They are logged in the batch's
//! write-ahead offsets entry before any task runs, so a rerun reads exactly the same rows.
//!
//! A split is opaque to everyone but its connector: a JSON object whose `kind` names the
//! connector's split type and whose other fields only that connector reads. The core logs,
//! ships and compares splits without knowing what is in them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceSplit(serde_json::Value);

impl SourceSplit {
    /// A split of type `kind` with the connector's `fields` (a struct that serializes to an
    /// object).
    pub fn encode<T: Serialize>(kind: &str, fields: &T) -> SourceSplit {
        let mut value = serde_json::to_value(fields).expect("split fields serialize");
        let object = value.as_object_mut().expect("split fields are an object");
        object.insert("kind".into(), kind.into());
        SourceSplit(value)
    }

    /// The connector's fields, if this is a split of type `kind`.
    pub fn decode<T: DeserializeOwned>(&self, kind: &str) -> Result<T, String> {
        if self.kind() != kind {
            return Err(format!("a '{}' split is not a '{kind}' split", self.kind()));
        }
        serde_json::from_value(self.0.clone()).map_err(|e| format!("bad '{kind}' split: {e}"))
    }

    /// The split's type, as its connector named it.
    pub fn kind(&self) -> &str {
        self.0.get("kind").and_then(|k| k.as_str()).unwrap_or("")
    }

    pub fn to_json(&self) -> String {
        self.0.to_string()
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if !value.is_object() {
            use serde::de::Error;
            return Err(serde_json::Error::custom("a split is a JSON object"));
        }
        Ok(SourceSplit(value))
    }
}

impl std::fmt::Debug for SourceSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rows {
        start: u64,
        end: u64,
    }

    #[test]
    fn a_split_round_trips_through_its_logged_json_and_checks_its_kind() {
        let split = SourceSplit::encode("datagen", &Rows { start: 0, end: 5 });
        assert_eq!(split.to_json(), r#"{"end":5,"kind":"datagen","start":0}"#);
        let back = SourceSplit::from_json(&split.to_json()).unwrap();
        assert_eq!(back, split);
        assert_eq!(
            back.decode::<Rows>("datagen").unwrap(),
            Rows { start: 0, end: 5 }
        );
        let err = back.decode::<Rows>("kafka").unwrap_err();
        assert_eq!(err, "a 'datagen' split is not a 'kafka' split");
        assert!(SourceSplit::from_json("[1]").is_err());
    }
}
