//! Fault injection for supervision tests (`Job::Diagnostic`): a rank that exits, aborts, panics or
//! fails while the others wait in a collective, and a cancellable sleep.

use std::time::Duration;

use super::{JobCtx, JobError};
use crate::runtime::protocol::{Diagnostic, JobOutput};

/// Granularity of the cancellable sleep.
const SLEEP_SLICE_MS: u64 = 20;

pub fn run(ctx: &JobCtx, d: &Diagnostic) -> Result<JobOutput, JobError> {
    let me = ctx.rank();
    match d {
        Diagnostic::Sleep { ms } => {
            // A fixed number of slices (not a deadline) so every rank makes the same number of
            // collective cancel checks.
            let slices = ms.div_ceil(SLEEP_SLICE_MS);
            ctx.progress(0, slices, "sleeping");
            for i in 0..slices {
                std::thread::sleep(Duration::from_millis(SLEEP_SLICE_MS));
                ctx.check_cancelled()?;
                if i % 25 == 24 {
                    ctx.progress(i + 1, slices, "sleeping");
                }
            }
            return Ok(JobOutput::None);
        }
        Diagnostic::Exit { rank, code } if rank.is_none_or(|r| r == me) => {
            tracing::warn!("diagnostic: exiting with code {code}");
            std::process::exit(*code);
        }
        Diagnostic::Abort { rank } if *rank == me => {
            tracing::warn!("diagnostic: aborting");
            std::process::abort();
        }
        Diagnostic::Panic { rank } if *rank == me => {
            panic!("diagnostic panic requested for rank {me}");
        }
        Diagnostic::Fail { rank, message } if *rank == me => return Err(JobError::Invalid(message.clone())),
        _ => {}
    }
    // The other ranks wait in a collective, as they would when a peer dies mid-job.
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}
