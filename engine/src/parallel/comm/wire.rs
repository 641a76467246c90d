//! Tensors as bytes: the dtype tag, the frame header every data-plane message carries, and the
//! host-memory round trip (`Tensor` → little-endian bytes → `Tensor`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// The dtypes that can cross a process boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireDType {
    F32,
    F16,
    BF16,
    F64,
    U8,
    U32,
    I64,
}

impl WireDType {
    pub const ALL: [WireDType; 7] = [
        WireDType::F32,
        WireDType::F16,
        WireDType::BF16,
        WireDType::F64,
        WireDType::U8,
        WireDType::U32,
        WireDType::I64,
    ];

    pub fn from_dtype(dtype: DType) -> candle_core::Result<Self> {
        Ok(match dtype {
            DType::F32 => Self::F32,
            DType::F16 => Self::F16,
            DType::BF16 => Self::BF16,
            DType::F64 => Self::F64,
            DType::U8 => Self::U8,
            DType::U32 => Self::U32,
            DType::I64 => Self::I64,
            other => candle_core::bail!("collectives do not support dtype {other:?} (use f32/f16/bf16/f64/u8/u32/i64)"),
        })
    }

    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::U8 => DType::U8,
            Self::U32 => DType::U32,
            Self::I64 => DType::I64,
        }
    }

    pub fn size_in_bytes(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

/// Which operation a frame belongs to. Receivers check it, so ranks that call different collectives
/// get an error naming both instead of silently mixing bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpCode {
    Send,
    AllGather,
    Broadcast,
    AllToAll,
    ReduceScatter,
    ReduceGather,
    Barrier,
}

/// Describes the payload that follows it on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    pub op: OpCode,
    /// Identifies the (sub-)group the op runs in; see `MeshComm::group_tag`.
    pub group: u64,
    pub dtype: WireDType,
    pub shape: Vec<usize>,
}

impl FrameHeader {
    pub fn payload_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// Bytes shared between the op that produced them and the writer that sends them (no copy per peer).
#[derive(Clone, Debug)]
pub struct Payload {
    buf: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl Payload {
    pub fn whole(buf: Arc<Vec<u8>>) -> Self {
        let range = 0..buf.len();
        Self { buf, range }
    }

    pub fn slice(buf: &Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Self {
        Self { buf: buf.clone(), range }
    }

    pub fn empty() -> Self {
        Self::whole(Arc::new(Vec::new()))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// One message of the data plane.
#[derive(Clone, Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Payload,
}

/// Copies a tensor (any device, any layout) into contiguous little-endian host bytes.
pub fn tensor_to_bytes(xs: &Tensor) -> candle_core::Result<Vec<u8>> {
    fn cast<T: candle_core::WithDType + bytemuck::Pod>(xs: &Tensor) -> candle_core::Result<Vec<u8>> {
        let values = xs.flatten_all()?.to_vec1::<T>()?;
        Ok(bytemuck::cast_slice(&values).to_vec())
    }
    match WireDType::from_dtype(xs.dtype())? {
        WireDType::F32 => cast::<f32>(xs),
        WireDType::F16 => cast::<half::f16>(xs),
        WireDType::BF16 => cast::<half::bf16>(xs),
        WireDType::F64 => cast::<f64>(xs),
        WireDType::U8 => Ok(xs.flatten_all()?.to_vec1::<u8>()?),
        WireDType::U32 => cast::<u32>(xs),
        WireDType::I64 => cast::<i64>(xs),
    }
}

/// Rebuilds a tensor from bytes made by [`tensor_to_bytes`].
pub fn tensor_from_bytes(
    bytes: &[u8],
    dtype: WireDType,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
    if bytes.len() != expected {
        candle_core::bail!("payload of {} bytes does not match {dtype:?} {shape:?} ({expected} bytes)", bytes.len());
    }
    Tensor::from_raw_buffer(bytes, dtype.dtype(), shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_dtype() -> candle_core::Result<()> {
        let base = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((2, 3, 4))?;
        for dtype in WireDType::ALL {
            // A transposed view checks that non-contiguous layouts are flattened in logical order.
            let xs = base.to_dtype(dtype.dtype())?.transpose(1, 2)?;
            let bytes = tensor_to_bytes(&xs)?;
            assert_eq!(bytes.len(), 24 * dtype.size_in_bytes());
            let ys = tensor_from_bytes(&bytes, dtype, xs.dims(), &Device::Cpu)?;
            let diff = (xs.to_dtype(DType::F64)? - ys.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert_eq!(diff, 0.0, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn wrong_payload_length_is_an_error() {
        let err = tensor_from_bytes(&[0u8; 7], WireDType::F32, &[2], &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("7 bytes"), "{err}");
    }
}
