//! `tessera-worker`: one per device, started by the engine's `Supervisor` (see `runtime::worker`).

use std::process::ExitCode;

use tessera_engine::alloc::CountingAlloc;

// Heap telemetry: live and peak bytes of this process.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> ExitCode {
    ALLOC.activate();
    tessera_engine::runtime::worker::main_from_args()
}
