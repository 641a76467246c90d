//! Per-conv causal feature caches for chunked (frame-by-frame) encode and decode.
//!
//! Every cached module takes the next slot in traversal order at every chunk, exactly like
//! diffusers' `feat_cache` / `feat_idx` list, so one `FeatCache` per video (or per tile) holds the
//! whole temporal state of the network between chunks.

use std::sync::Arc;

use candle_core::Tensor;

use super::split::RowExchange;

/// State of one cached module.
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Nothing seen yet (first chunk).
    #[default]
    Empty,
    /// `upsample3d` after its first chunk: diffusers' `"Rep"` sentinel (the time conv has not run).
    Rep,
    /// The last one or two input frames of a causal conv, `[≤2, C, H, W]`.
    Frames(Tensor),
    /// Halo mode: the last input frames of a causal conv on a row slab, `[≤2, C, H, W]`, and the
    /// rows the neighbouring slabs lent them, `[≤2, C, rows, W]` (`None` at the frame's edge).
    Slab { body: Tensor, above: Option<Tensor>, below: Option<Tensor> },
}

impl Slot {
    pub fn frames(&self) -> Option<&Tensor> {
        match self {
            Slot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// All slots of one encoder or decoder pass, plus the cursor of the chunk being processed, and —
/// in halo mode — the exchange with the ranks holding the neighbouring row slabs.
#[derive(Debug, Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    cursor: usize,
    split: Option<Arc<dyn RowExchange>>,
}

impl FeatCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache for a rank that holds one row slab of every feature map (halo mode).
    pub fn with_split(split: Arc<dyn RowExchange>) -> Self {
        Self { split: Some(split), ..Self::default() }
    }

    /// The row exchange of halo mode, if any.
    pub fn split(&self) -> Option<Arc<dyn RowExchange>> {
        self.split.clone()
    }

    /// Rewinds the cursor: call before each chunk.
    pub fn start_chunk(&mut self) {
        self.cursor = 0;
    }

    /// Where the cursor stands, for [`FeatCache::rewind`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Moves the cursor back to `to` (a value of [`FeatCache::cursor`] in this chunk): the decoder
    /// runs its frame-preserving tail once per frame, each pass reading and updating the same slots.
    pub fn rewind(&mut self, to: usize) {
        debug_assert!(to <= self.cursor);
        self.cursor = to;
    }

    /// The slot of the next cached module in traversal order.
    pub fn next_slot(&mut self) -> &mut Slot {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// Bytes held by cached frames (for memory reports).
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Frames(t) => size(t),
                Slot::Slab { body, above, below } => size(body) + above.iter().chain(below).map(size).sum::<usize>(),
                _ => 0,
            })
            .sum()
    }
}
