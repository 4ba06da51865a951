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
}

pub(super) fn run(args: DemoArgs) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(crate::demo::run(&args.dir, args.scenario))
}
