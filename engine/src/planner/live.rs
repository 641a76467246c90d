//! A live-bytes simulator: the planner replays a forward pass as a sequence of allocations and
//! frees in the order the real code makes them, and the peak of the running sum is the prediction.
//!
//! Why a replay rather than a sum of the largest tensors: which tensors coexist depends on
//! statement order (Rust drops temporaries at the end of a statement and shadowed bindings only at
//! the end of their scope), and the same tensor sizes give peaks 2× apart under different orders.

/// Running live bytes and their peak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    live: u64,
    peak: u64,
}

impl Live {
    /// Starts with `base` bytes already live (weights, inputs).
    pub fn with_base(base: u64) -> Self {
        Self { live: base, peak: base }
    }

    pub fn alloc(&mut self, bytes: u64) {
        self.live += bytes;
        self.peak = self.peak.max(self.live);
    }

    /// Frees bytes allocated earlier. Saturates: a replay bug must not wrap into a huge number.
    pub fn free(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.live, "freeing {bytes} B with {} B live", self.live);
        self.live = self.live.saturating_sub(bytes);
    }

    /// A short-lived buffer: allocated and freed before anything else happens.
    pub fn transient(&mut self, bytes: u64) {
        self.alloc(bytes);
        self.free(bytes);
    }

    pub fn live(&self) -> u64 {
        self.live
    }

    pub fn peak(&self) -> u64 {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_the_order_of_allocations() {
        // Same three buffers, two orders: freeing before the next allocation halves the peak.
        let mut a = Live::with_base(10);
        a.alloc(100);
        a.alloc(100);
        a.free(100);
        a.free(100);
        assert_eq!((a.peak(), a.live()), (210, 10));
        let mut b = Live::with_base(10);
        b.alloc(100);
        b.free(100);
        b.transient(100);
        assert_eq!((b.peak(), b.live()), (110, 10));
    }
}
