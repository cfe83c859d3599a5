//! Table declarations and their `WITH (...)` options.

use arrow::datatypes::SchemaRef;
use sluice_core::{Failure, FailureKind};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("table '{table}': {message}")]
    Options { table: String, message: String },
    #[error("{0}")]
    Read(String),
    #[error("{0}")]
    Write(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

impl ConnectorError {
    /// What kind of failure this is: bad options and undecodable data fail the same way on
    /// every attempt; a write or a store call may work on the next one, unless the store
    /// refused us for good (no permission, no credentials, an invalid path).
    pub fn kind(&self) -> FailureKind {
        match self {
            ConnectorError::Options { .. } => FailureKind::BadPlan,
            ConnectorError::Read(_) => FailureKind::BadInput,
            ConnectorError::Write(_) => FailureKind::Outage,
            ConnectorError::Store(e) => sluice_core::failure::store_failure_kind(e),
        }
    }

    pub fn into_failure(self) -> Failure {
        Failure::new(self.kind(), self.to_string())
    }
}

/// A `CREATE TABLE ... WITH (...)` declaration.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    /// Declared columns (without pseudo-columns such as `_batch`).
    pub schema: SchemaRef,
    pub options: BTreeMap<String, String>,
}

impl TableSpec {
    pub fn connector(&self) -> Result<&str, ConnectorError> {
        self.options
            .get("connector")
            .map(String::as_str)
            .ok_or_else(|| self.error("missing option 'connector'"))
    }

    /// Declared `static = 'true'` (the files connector checks the value).
    pub fn is_static(&self) -> bool {
        self.options.get("static").is_some_and(|v| v == "true")
    }

    pub fn error(&self, message: impl Into<String>) -> ConnectorError {
        ConnectorError::Options {
            table: self.name.clone(),
            message: message.into(),
        }
    }

    /// Checks the options against the connector's list and gives typed access to them.
    pub fn options(
        &self,
        allowed: &[&str],
        prefixes: &[&str],
    ) -> Result<Options<'_>, ConnectorError> {
        for key in self.options.keys() {
            let ok = key == "connector"
                || allowed.contains(&key.as_str())
                || prefixes.iter().any(|p| key.starts_with(p));
            if !ok {
                let mut valid: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
                valid.extend(prefixes.iter().map(|p| format!("{p}*")));
                return Err(self.error(format!(
                    "unknown option '{key}' for connector '{}'; valid options: {}",
                    self.options["connector"],
                    valid.join(", ")
                )));
            }
        }
        Ok(Options { spec: self })
    }
}

/// Typed, validated access to a table's options.
pub struct Options<'a> {
    spec: &'a TableSpec,
}

impl Options<'_> {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.spec.options.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&str, ConnectorError> {
        self.str(key)
            .ok_or_else(|| self.spec.error(format!("missing option '{key}'")))
    }

    pub fn one_of<'v>(
        &self,
        key: &str,
        valid: &[&'v str],
        default: &'v str,
    ) -> Result<&'v str, ConnectorError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => valid
                .iter()
                .find(|x| x.eq_ignore_ascii_case(v))
                .copied()
                .ok_or_else(|| {
                    self.spec.error(format!(
                        "option '{key}' = '{v}' is invalid; valid values: {}",
                        valid.join(", ")
                    ))
                }),
        }
    }

    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConnectorError> {
        self.str(key)
            .map(|v| {
                v.trim().parse::<T>().map_err(|_| {
                    self.spec.error(format!(
                        "option '{key}' = '{v}' is not a valid {}",
                        std::any::type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// A number that must lie in `range` (a NaN or an infinity never does).
    pub fn number_in<T>(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<Option<T>, ConnectorError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
    {
        let Some(v) = self.str(key) else {
            return Ok(None);
        };
        match v.trim().parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(self.spec.error(format!(
                "option '{key}' = '{v}' must be a number from {} to {}",
                range.start(),
                range.end()
            ))),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConnectorError> {
        Ok(self.one_of(
            key,
            &["true", "false"],
            if default { "true" } else { "false" },
        )? == "true")
    }

    pub fn error(&self, message: impl Into<String>) -> ConnectorError {
        self.spec.error(message)
    }
}
