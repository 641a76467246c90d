//! `SingleRank`: the world of one. Every collective is the identity, so model code can always hold a
//! `dyn Collective` and pay nothing when it runs unsharded.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

use super::{check_sub_group, Collective, ReduceOp};
use crate::parallel::Rank;

#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> Rank {
        Rank(0)
    }

    fn world_size(&self) -> usize {
        1
    }

    fn send(&self, _xs: &Tensor, dst: Rank) -> Result<()> {
        candle_core::bail!("send to rank {dst}: a single-rank world has no peers")
    }

    fn recv(&self, src: Rank, _shape: &[usize], _dtype: DType) -> Result<Tensor> {
        candle_core::bail!("recv from rank {src}: a single-rank world has no peers")
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        xs.dim(dim)?; // same validation as the real backends
        Ok(xs.clone())
    }

    fn broadcast(&self, xs: &Tensor, root: Rank) -> Result<Tensor> {
        if root.0 != 0 {
            candle_core::bail!("broadcast root {root} out of range for a single-rank world");
        }
        Ok(xs.clone())
    }

    fn all_to_all(&self, xs: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        xs.dim(split_dim)?;
        xs.dim(concat_dim)?;
        Ok(xs.clone())
    }

    fn all_reduce(&self, xs: &Tensor, _op: ReduceOp) -> Result<Tensor> {
        Ok(xs.clone())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>> {
        check_sub_group(ranks, 1, Rank(0))?;
        Ok(Arc::new(SingleRank))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn every_op_is_identity() -> Result<()> {
        let xs = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let comm = SingleRank;
        for ys in [
            comm.all_gather(&xs, 1)?,
            comm.broadcast(&xs, Rank(0))?,
            comm.all_to_all(&xs, 0, 1)?,
            comm.all_reduce_sum(&xs)?,
            comm.all_reduce_max(&xs)?,
        ] {
            assert_eq!(ys.to_vec2::<f32>()?, xs.to_vec2::<f32>()?);
        }
        comm.barrier()?;
        assert!(comm.all_gather(&xs, 2).is_err());
        assert!(comm.send(&xs, Rank(1)).is_err());
        assert_eq!(comm.sub_group(&[Rank(0)])?.world_size(), 1);
        Ok(())
    }
}
