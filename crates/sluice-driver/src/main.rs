use clap::Parser;
use sluice_driver::{DriverArgs, DriverConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = DriverArgs::parse();
    sluice_driver::init_logging();
    let config = DriverConfig::load(&args)?;
    sluice_driver::run(config).await
}
