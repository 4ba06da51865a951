//! `lgsp demo`: a whole province on this machine, in one command.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Where the demo keeps its CA, registry and node data (replaced at each run).
    #[arg(long, value_name = "DIR", default_value = "lgsp-demo")]
    dir: PathBuf,
    /// Run the walkthrough by itself, print each step and its result, and
    /// exit 0 only if every step did what it should.
    #[arg(long)]
    scenario: bool,
    /// The first of the 13 consecutive ports the demo listens on, on
    /// 127.0.0.1 (registry servers from here; the printed commands name
    /// them all). Without it: 7101-7113, or a free block when those are taken.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::demo::Ports::MAX_BASE)))]
    base_port: Option<u16>,
}

pub(super) fn run(args: DemoArgs) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(crate::demo::run(&args.dir, args.base_port, args.scenario))
}
