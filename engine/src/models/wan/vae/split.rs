//! Row-slab decomposition of the VAE for `halo` mode: each rank owns a horizontal slab of every
//! feature map; every spatial conv first fetches the rows it needs from the neighbouring slabs (zeros
//! at the frame's top and bottom), so the result equals the untiled decode — no seams.
//!
//! The model code only sees [`RowExchange`]; the runtime implements it over its collectives, and
//! [`LocalRowExchange`] implements it between threads of one process (tests, single-process runs).

use std::ops::Range;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};

use candle_core::{Result, Tensor};

/// Neighbour exchange between the ranks that each hold a slab of rows (dim 2 of `[T, C, H, W]`).
pub trait RowExchange: Send + Sync + std::fmt::Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sends `to_above` to rank−1 and `to_below` to rank+1 (skipped at the edges) and returns what
    /// (rank−1, rank+1) sent this rank. Every rank calls it in the same order with the same pattern,
    /// so a rank that sends up also receives from below, and one that sends down receives from above.
    fn exchange(&self, to_above: Option<Tensor>, to_below: Option<Tensor>) -> Result<(Option<Tensor>, Option<Tensor>)>;
    /// Every rank's `xs` concatenated along `dim` in rank order, on every rank.
    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor>;
    /// Every rank's `xs` concatenated along `dim` in rank order, on rank 0 only (others get `None`):
    /// how finished output rows reach the assembling rank without a copy on every rank.
    fn gather_to_root(&self, xs: &Tensor, dim: usize) -> Result<Option<Tensor>>;
}

/// Balanced split of `rows` rows over `world` ranks (the first `rows % world` ranks get one more).
/// Ranks beyond `rows` get empty ranges.
pub fn split_rows(rows: usize, world: usize) -> Vec<Range<usize>> {
    let base = rows / world;
    let extra = rows % world;
    let mut start = 0;
    (0..world)
        .map(|r| {
            let len = base + usize::from(r < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// `xs` with `above` rows from the slab above and `below` rows from the slab below added along the
/// row axis (zero rows where there is no neighbour: the frame's own zero padding).
pub fn with_halo(ex: &dyn RowExchange, xs: &Tensor, above: usize, below: usize) -> Result<Tensor> {
    let rows = xs.dim(2)?;
    if rows < above.max(below) {
        candle_core::bail!("halo of {above}/{below} rows needs slabs of at least that many rows, this one has {rows}");
    }
    // Every rank runs the same conv: the rank above wants `below` rows from me (my first ones),
    // the rank below wants `above` rows from me (my last ones).
    let to_above = if below > 0 { Some(xs.narrow(2, 0, below)?.contiguous()?) } else { None };
    let to_below = if above > 0 { Some(xs.narrow(2, rows - above, above)?.contiguous()?) } else { None };
    let (from_above, from_below) = ex.exchange(to_above, to_below)?;
    let zeros = |n: usize| -> Result<Tensor> {
        let (t, c, _, w) = xs.dims4()?;
        Tensor::zeros((t, c, n, w), xs.dtype(), xs.device())
    };
    let mut parts = Vec::with_capacity(3);
    if above > 0 {
        parts.push(match from_above {
            Some(t) => t,
            None => zeros(above)?,
        });
    }
    parts.push(xs.clone());
    if below > 0 {
        parts.push(match from_below {
            Some(t) => t,
            None => zeros(below)?,
        });
    }
    Tensor::cat(&parts, 2)
}

/// One directed channel between neighbours, halves taken by the two endpoints.
type Link = (Option<Sender<Tensor>>, Option<Receiver<Tensor>>);

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    gather: Mutex<Vec<Option<Tensor>>>,
}

/// In-process ranks (one thread each) exchanging rows over channels.
#[derive(Debug)]
pub struct LocalRowExchange {
    rank: usize,
    world: usize,
    to_above: Option<Sender<Tensor>>,
    to_below: Option<Sender<Tensor>>,
    from_above: Option<Mutex<Receiver<Tensor>>>,
    from_below: Option<Mutex<Receiver<Tensor>>>,
    shared: Arc<Shared>,
}

impl LocalRowExchange {
    /// One endpoint per rank, to be moved into that rank's thread.
    pub fn world(world: usize) -> Vec<LocalRowExchange> {
        let shared = Arc::new(Shared { barrier: Barrier::new(world), gather: Mutex::new(vec![None; world]) });
        // down[r]: rank r → rank r+1 ; up[r]: rank r+1 → rank r.
        let mut down: Vec<Link> = Vec::new();
        let mut up: Vec<Link> = Vec::new();
        for _ in 0..world.saturating_sub(1) {
            let (s, r) = channel();
            down.push((Some(s), Some(r)));
            let (s, r) = channel();
            up.push((Some(s), Some(r)));
        }
        (0..world)
            .map(|rank| LocalRowExchange {
                rank,
                world,
                to_below: if rank + 1 < world { down[rank].0.take() } else { None },
                from_above: if rank > 0 { down[rank - 1].1.take().map(Mutex::new) } else { None },
                to_above: if rank > 0 { up[rank - 1].0.take() } else { None },
                from_below: if rank + 1 < world { up[rank].1.take().map(Mutex::new) } else { None },
                shared: shared.clone(),
            })
            .collect()
    }
}

impl LocalRowExchange {
    /// Deposits `xs`, waits for everyone, and returns all parts if `take` (barriers keep rounds apart).
    fn gather_parts(&self, xs: &Tensor, take: bool) -> Result<Vec<Tensor>> {
        let lock = || self.shared.gather.lock().map_err(|_| candle_core::Error::msg("row gather lock poisoned"));
        lock()?[self.rank] = Some(xs.clone());
        self.shared.barrier.wait();
        let parts: Vec<Tensor> = if take { lock()?.iter().flatten().cloned().collect() } else { vec![] };
        self.shared.barrier.wait();
        if self.rank == 0 {
            lock()?.iter_mut().for_each(|p| *p = None);
        }
        self.shared.barrier.wait();
        Ok(parts)
    }
}

fn recv(rx: &Option<Mutex<Receiver<Tensor>>>, what: &str) -> Result<Option<Tensor>> {
    match rx {
        None => Ok(None),
        Some(rx) => {
            let rx = rx.lock().map_err(|_| candle_core::Error::msg("row exchange lock poisoned"))?;
            rx.recv().map(Some).map_err(|_| candle_core::Error::msg(format!("the rank {what} stopped")))
        }
    }
}

impl RowExchange for LocalRowExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn exchange(&self, to_above: Option<Tensor>, to_below: Option<Tensor>) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let send = |tx: &Option<Sender<Tensor>>, t: Option<Tensor>, what: &str| -> Result<()> {
            if let (Some(tx), Some(t)) = (tx, t) {
                tx.send(t).map_err(|_| candle_core::Error::msg(format!("the rank {what} stopped")))?;
            }
            Ok(())
        };
        let (expect_above, expect_below) = (to_below.is_some(), to_above.is_some());
        send(&self.to_above, to_above, "above")?;
        send(&self.to_below, to_below, "below")?;
        let from_above = if expect_above { recv(&self.from_above, "above")? } else { None };
        let from_below = if expect_below { recv(&self.from_below, "below")? } else { None };
        Ok((from_above, from_below))
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        let parts = self.gather_parts(xs, true)?;
        Tensor::cat(&parts, dim)
    }

    fn gather_to_root(&self, xs: &Tensor, dim: usize) -> Result<Option<Tensor>> {
        let parts = self.gather_parts(xs, self.rank == 0)?;
        if self.rank == 0 {
            Ok(Some(Tensor::cat(&parts, dim)?))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_evenly_with_remainder_first() {
        assert_eq!(split_rows(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(split_rows(2, 3), vec![0..1, 1..2, 2..2]);
    }
}
