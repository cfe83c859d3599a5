//! Spark and Flink for the comparison: each in its own cached venv, with Java 17 from
//! Debian's packages when the machine has no `java`.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::engines::{Peer, PeerKind};

pub const PYSPARK: &str = "pyspark==4.3.0";
pub const PYFLINK: &str = "apache-flink==2.3.0";

/// The peer ready to run, or why it cannot be.
pub fn ensure(root: &Path, kind: PeerKind) -> anyhow::Result<Peer> {
    crate::ensure_debs(&[("java", "openjdk-17-jre-headless")])?;
    let java = Command::new("java")
        .arg("-version")
        .output()
        .context("running java -version")?;
    let version = String::from_utf8_lossy(&java.stderr);
    anyhow::ensure!(
        version.contains("\"17."),
        "Java 17 is needed, found {}",
        version.lines().next().unwrap_or("nothing")
    );
    let (venv, package, script) = match kind {
        PeerKind::Spark => ("pyspark", PYSPARK, "spark_job.py"),
        PeerKind::Flink => ("pyflink", PYFLINK, "flink_job.py"),
    };
    let python = crate::ensure_venv(venv, package, "python")?;
    Ok(Peer {
        kind,
        python,
        script: root.join("xtask/peers").join(script),
        package,
    })
}
