//! Row-slab decomposition of the VAE for `halo` mode: each rank owns a horizontal slab of every
//! feature map; every spatial conv first fetches the rows it needs from the neighbouring slabs (zeros
//! at the frame's top and bottom), so the result equals the untiled decode — no seams.
//!
//! The model code only sees [`RowExchange`]; [`CommRowExchange`] implements it over any of the
//! runtime's collectives (socket or NCCL workers, or threads of one process in tests).
//!
//! A conv's exchange is split in two ([`RowExchange::start`], [`PendingRows::wait`]): the rows go out
//! and the neighbours' rows are in flight while the conv computes the output rows that need none of
//! them (`ops::conv_frames_lent`); only the edge rows wait. A rank sends (and copies) rows only to
//! neighbours that exist: the top and bottom slabs send one way.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Result, Tensor};

use crate::parallel::comm::{Collective, PendingRecv, Received};
use crate::parallel::Rank;

/// The rows the neighbouring slabs lend this one for a conv: `above` `[T, C, rows, W]` from the slab
/// above, `below` from the slab below; `None` at the frame's top or bottom edge (zero padding).
#[derive(Debug, Clone, Default)]
pub struct HaloRows {
    pub above: Option<Tensor>,
    pub below: Option<Tensor>,
}

/// A halo exchange in flight ([`RowExchange::start`]).
pub trait PendingRows: Send {
    /// Blocks until the neighbours' rows have arrived.
    fn wait(self: Box<Self>) -> Result<HaloRows>;
}

/// Rows that have already arrived.
impl PendingRows for HaloRows {
    fn wait(self: Box<Self>) -> Result<HaloRows> {
        Ok(*self)
    }
}

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
    /// Starts the exchange of a conv with `above`/`below` rows of top/bottom padding on the slab
    /// `xs` `[T, C, H, W]`: this slab's first `below` rows go to the rank above (its bottom halo),
    /// its last `above` rows to the rank below, and `above` rows from the rank above and `below`
    /// from the rank below come back. Between this and [`PendingRows::wait`] the caller makes no
    /// other call on the exchange. The default runs [`Self::exchange`] at once.
    fn start(&self, xs: &Tensor, above: usize, below: usize) -> Result<Box<dyn PendingRows>> {
        let rows = xs.dim(2)?;
        if rows < above.max(below) {
            candle_core::bail!(
                "halo of {above}/{below} rows needs slabs of at least that many rows, this one has {rows}"
            );
        }
        let (rank, world) = (self.rank(), self.world_size());
        let to_above = (below > 0 && rank > 0).then(|| xs.narrow(2, 0, below)?.contiguous()).transpose()?;
        let to_below =
            (above > 0 && rank + 1 < world).then(|| xs.narrow(2, rows - above, above)?.contiguous()).transpose()?;
        let (above, below) = self.exchange(to_above, to_below)?;
        Ok(Box::new(HaloRows { above, below }))
    }
    /// Seconds callers were blocked on exchanges (in `exchange`, `start` and `wait`) so far.
    fn wait_seconds(&self) -> f64 {
        0.0
    }
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
    // Every rank runs the same conv: the rank above wants `below` rows from me (my first ones),
    // the rank below wants `above` rows from me (my last ones).
    let HaloRows { above: from_above, below: from_below } = ex.start(xs, above, below)?.wait()?;
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

/// [`RowExchange`] over the runtime's collectives (worker processes on sockets or NCCL, or
/// in-process ranks on `ThreadComm`). Slabs may differ by a row; gathers pad to the tallest slab and
/// cut the padding out again.
#[derive(Debug)]
pub struct CommRowExchange {
    comm: Arc<dyn Collective>,
    latent_rows: Vec<Range<usize>>,
    /// `false`: every exchange completes before its conv starts (`TESSERA_HALO_OVERLAP=0`, the
    /// before/after comparison of README "VAE patch parallel").
    overlap: bool,
    /// Nanoseconds callers were blocked on exchanges.
    waited: Arc<AtomicU64>,
}

/// Halo exchanges overlap the interior rows' compute unless `TESSERA_HALO_OVERLAP=0`.
pub fn halo_overlap_enabled() -> bool {
    std::env::var("TESSERA_HALO_OVERLAP").map_or(true, |v| v.trim() != "0")
}

impl CommRowExchange {
    /// `latent_h`: the latent height that [`split_rows`] divides over the group.
    pub fn new(comm: Arc<dyn Collective>, latent_h: usize) -> Self {
        let latent_rows = split_rows(latent_h, comm.world_size());
        Self { comm, latent_rows, overlap: halo_overlap_enabled(), waited: Arc::default() }
    }

    fn count(waited: &AtomicU64, since: Instant) {
        waited.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The synchronous exchange behind [`RowExchange::exchange`].
    fn exchange_now(
        &self,
        to_above: Option<Tensor>,
        to_below: Option<Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rank, world) = (self.rank(), self.world_size());
        // A neighbour sends back what it was asked for in the same pattern: as many rows as I send
        // the other way, with my shape otherwise.
        let shape_from_above = to_below.as_ref().map(|t| t.dims().to_vec());
        let shape_from_below = to_above.as_ref().map(|t| t.dims().to_vec());
        let dtype = to_above.as_ref().or(to_below.as_ref()).map(|t| t.dtype());
        let (Some(dtype), true) = (dtype, world > 1) else { return Ok((None, None)) };
        // One grouped exchange: on NCCL both neighbours send first, which separate sends and
        // receives on one stream would deadlock.
        let mut sends = Vec::with_capacity(2);
        if let (Some(t), true) = (&to_above, rank > 0) {
            sends.push((Rank(rank - 1), t.clone()));
        }
        if let (Some(t), true) = (&to_below, rank + 1 < world) {
            sends.push((Rank(rank + 1), t.clone()));
        }
        let mut recvs = Vec::with_capacity(2);
        let above = match (shape_from_above, rank > 0) {
            (Some(shape), true) => {
                recvs.push((Rank(rank - 1), shape, dtype));
                true
            }
            _ => false,
        };
        if let (Some(shape), true) = (shape_from_below, rank + 1 < world) {
            recvs.push((Rank(rank + 1), shape, dtype));
        }
        let mut got = self.comm.send_recv(&sends, &recvs)?.into_iter();
        let from_above = if above { got.next() } else { None };
        let from_below = got.next();
        Ok((from_above, from_below))
    }

    /// Rows of `rank`'s slab in a feature map of this rank's `my_rows` rows.
    fn rows_of(&self, rank: usize, my_rows: usize) -> Result<usize> {
        let mine = self.latent_rows[self.comm.rank().0].len();
        if mine == 0 || !my_rows.is_multiple_of(mine) {
            candle_core::bail!("slab of {my_rows} rows is not a multiple of this rank's {mine} latent rows");
        }
        Ok(self.latent_rows[rank].len() * (my_rows / mine))
    }
}

impl RowExchange for CommRowExchange {
    fn rank(&self) -> usize {
        self.comm.rank().0
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn exchange(&self, to_above: Option<Tensor>, to_below: Option<Tensor>) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let t0 = Instant::now();
        let out = self.exchange_now(to_above, to_below);
        Self::count(&self.waited, t0);
        out
    }

    fn start(&self, xs: &Tensor, above: usize, below: usize) -> Result<Box<dyn PendingRows>> {
        let t0 = Instant::now();
        let (t, c, rows, w) = xs.dims4()?;
        if rows < above.max(below) {
            candle_core::bail!(
                "halo of {above}/{below} rows needs slabs of at least that many rows, this one has {rows}"
            );
        }
        let (rank, world) = (self.rank(), self.world_size());
        let (up, down) = (rank > 0, rank + 1 < world);
        // Rows go only to neighbours that exist, as views: the collective copies them onto the
        // wire (or the device buffer) once.
        let mut sends = Vec::with_capacity(2);
        if up && below > 0 {
            sends.push((Rank(rank - 1), xs.narrow(2, 0, below)?));
        }
        if down && above > 0 {
            sends.push((Rank(rank + 1), xs.narrow(2, rows - above, above)?));
        }
        let (from_above, from_below) = (up && above > 0, down && below > 0);
        let mut recvs = Vec::with_capacity(2);
        if from_above {
            recvs.push((Rank(rank - 1), vec![t, c, above, w], xs.dtype()));
        }
        if from_below {
            recvs.push((Rank(rank + 1), vec![t, c, below, w], xs.dtype()));
        }
        let pending: Box<dyn PendingRecv> = if self.overlap {
            self.comm.send_recv_start(&sends, &recvs)?
        } else {
            Box::new(Received(self.comm.send_recv(&sends, &recvs)?))
        };
        Self::count(&self.waited, t0);
        Ok(Box::new(CommPending { pending, from_above, from_below, waited: self.waited.clone() }))
    }

    fn wait_seconds(&self) -> f64 {
        self.waited.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        let my_rows = xs.dim(dim)?;
        let rows: Vec<usize> = (0..self.world_size()).map(|r| self.rows_of(r, my_rows)).collect::<Result<_>>()?;
        let tallest = rows.iter().copied().max().unwrap_or(my_rows);
        let padded = if my_rows < tallest { xs.pad_with_zeros(dim, 0, tallest - my_rows)? } else { xs.clone() };
        let all = self.comm.all_gather(&padded.contiguous()?, dim)?;
        let parts: Vec<Tensor> =
            rows.iter().enumerate().map(|(r, &n)| all.narrow(dim, r * tallest, n)).collect::<Result<_>>()?;
        Tensor::cat(&parts, dim)
    }

    fn gather_to_root(&self, xs: &Tensor, dim: usize) -> Result<Option<Tensor>> {
        let my_rows = xs.dim(dim)?;
        if self.rank() != 0 {
            self.comm.send(&xs.contiguous()?, Rank(0))?;
            return Ok(None);
        }
        let mut parts = vec![xs.clone()];
        for r in 1..self.world_size() {
            let mut shape = xs.dims().to_vec();
            shape[dim] = self.rows_of(r, my_rows)?;
            parts.push(self.comm.recv(Rank(r), &shape, xs.dtype())?);
        }
        Ok(Some(Tensor::cat(&parts, dim)?))
    }
}

/// A [`CommRowExchange::start`] in flight: which neighbours send, and the wait counter.
struct CommPending {
    pending: Box<dyn PendingRecv>,
    from_above: bool,
    from_below: bool,
    waited: Arc<AtomicU64>,
}

impl PendingRows for CommPending {
    fn wait(self: Box<Self>) -> Result<HaloRows> {
        let t0 = Instant::now();
        let got = self.pending.wait();
        CommRowExchange::count(&self.waited, t0);
        let mut got = got?.into_iter();
        let above = if self.from_above { got.next() } else { None };
        let below = if self.from_below { got.next() } else { None };
        Ok(HaloRows { above, below })
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
