//! [`Emitter`]: the engine threads' end of the event queue; wakes the UI after every event.

use crossbeam_channel::{Sender, TrySendError};
use tessera_engine::api::JobEvent;

use super::messages::EngineEvent;

pub(crate) struct Emitter {
    pub(crate) tx: Sender<EngineEvent>,
    pub(crate) repaint: Box<dyn Fn() + Send>,
}

impl Emitter {
    pub(crate) fn emit(&self, event: EngineEvent) {
        // Telemetry is the only flood; when the UI is far behind, drop memory samples rather
        // than stall the job (the chart has ten per second per rank). A denoise preview is
        // replaced by the next one, so it may be dropped too.
        let droppable = matches!(event, EngineEvent::Job(JobEvent::Memory { .. } | JobEvent::DenoisePreview { .. }));
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) if !droppable => {
                self.tx.send(ev).ok();
            }
            Err(_) => {}
        }
        (self.repaint)();
    }
}
