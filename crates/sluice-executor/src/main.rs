use clap::Parser;
use sluice_executor::{ExecutorArgs, ExecutorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ExecutorArgs::parse();
    sluice_executor::init_logging();
    let config = ExecutorConfig::load(&args)?;
    sluice_executor::run(config).await
}
