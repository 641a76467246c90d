//! Tensor-level ops of the VAE, on per-video activations laid out `[T, C, H, W]` (frames-major, so a
//! frame is one contiguous slab and per-frame 2-D ops need no permute).
//!
//! Each op has two paths with identical semantics: the CPU f32 fast path (`cpu_kernels`, no padded
//! or concatenated copies) and a generic candle path for CUDA / other dtypes. `KernelChoice` lets
//! tests force the generic path on CPU to prove the two agree.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Result, Tensor};

use super::cpu_kernels::{self, ConvGeom, RowInit, WeightView};

static FORCE_GENERIC: AtomicBool = AtomicBool::new(false);

/// Which implementation the ops use (the generic path exists for CUDA; tests compare the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    /// CPU fast kernels when the tensors are f32 on the CPU, candle ops otherwise.
    Auto,
    /// Always candle ops.
    Generic,
}

/// Process-wide switch; only tests and benchmarks change it.
pub fn set_kernel_choice(choice: KernelChoice) {
    FORCE_GENERIC.store(choice == KernelChoice::Generic, Ordering::SeqCst);
}

/// Whether the CPU kernels handle `xs` (f32 on the CPU, generic path not forced).
pub fn cpu_fast_path(xs: &Tensor) -> bool {
    use_cpu_kernels(xs)
}

fn use_cpu_kernels(xs: &Tensor) -> bool {
    !FORCE_GENERIC.load(Ordering::Relaxed) && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// A contiguous f32 CPU tensor's data.
pub(crate) fn cpu_slice(xs: &Tensor) -> Result<&[f32]> {
    // `storage_and_layout` returns a guard; we need a slice that outlives it, which is sound because
    // candle CPU storage is immutable once shared and lives as long as `xs`.
    let (storage, layout) = xs.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("expected a CPU tensor") };
    let data = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("expected a contiguous tensor") };
    let (ptr, len) = (data[start..end].as_ptr(), end - start);
    drop(storage);
    // SAFETY: the storage is reference-counted by `xs`, which the returned borrow is tied to.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Spatial padding of a per-frame conv: (top, bottom, left, right).
pub type Pad2d = (usize, usize, usize, usize);

/// Input frames of a conv: `taps[t][k]` feeds time tap `k` of output frame `t`; `None` is a causal
/// zero frame. Frames are `[C, H, W]` views (rank-3 tensors).
pub struct ConvInputs<'a> {
    pub taps: Vec<Vec<Option<&'a Tensor>>>,
}

/// Generic conv over frames: `weight` is `[O, I, kt, kh, kw]`, `bias` `[O]`; `residual`, when given,
/// is `[T, O, Ho, Wo]` and added to the result (fused on CPU).
pub fn conv_frames(
    inputs: &ConvInputs<'_>,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Pad2d,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (o, i, kt, kh, kw) = weight.dims5()?;
    let first = inputs.taps.iter().flatten().flatten().next();
    let Some(first) = first else { candle_core::bail!("conv_frames: no input frames") };
    let (c, h, w) = first.dims3()?;
    if c != i {
        candle_core::bail!("conv expects {i} input channels, got {c} (frame shape {:?})", first.shape());
    }
    let geom = ConvGeom::new(i, o, (h, w), (kh, kw), stride, pad);
    let frames = inputs.taps.len();
    if use_cpu_kernels(first) && weight.dtype() == DType::F32 {
        let wdata = cpu_slice(weight)?;
        let bdata = cpu_slice(bias)?;
        let frame_refs: Vec<Vec<Option<&[f32]>>> = inputs
            .taps
            .iter()
            .map(|ts| ts.iter().map(|f| f.map(cpu_slice).transpose()).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        let res_frames: Vec<&[f32]>;
        let init = match residual {
            Some(r) => {
                let data = cpu_slice(r)?;
                res_frames = data.chunks(geom.out_frame_len()).collect();
                RowInit::BiasPlus(bdata, &res_frames)
            }
            None => RowInit::Bias(bdata),
        };
        let mut out = vec![0f32; frames * geom.out_frame_len()];
        cpu_kernels::conv_frames(&mut out, &frame_refs, WeightView { data: wdata, kt }, init, geom);
        return from_vec(out, &[frames, o, geom.h_out, geom.w_out]);
    }
    // Generic path: one candle conv2d per time tap, summed; explicit zero padding.
    let (pt, pb, pl, pr) = pad;
    let mut outs = Vec::with_capacity(frames);
    for (t, taps) in inputs.taps.iter().enumerate() {
        let mut acc = bias.reshape((o, 1, 1))?.broadcast_as((o, geom.h_out, geom.w_out))?.contiguous()?;
        for (k, f) in taps.iter().enumerate() {
            let Some(f) = f else { continue };
            let wk = weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let xs = f.unsqueeze(0)?.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
            let ys = xs.conv2d(&wk, 0, stride, 1, 1)?.squeeze(0)?;
            acc = (acc + ys)?;
        }
        if let Some(r) = residual {
            acc = (acc + r.get(t)?)?;
        }
        outs.push(acc);
    }
    Tensor::stack(&outs, 0)
}

/// Sub-pixel weights for [`upsample_conv`] when the CPU kernels will run, else `None`.
pub fn upsample_phases(weight: &Tensor) -> Result<Option<Tensor>> {
    let (o, i, _kt, kh, kw) = weight.dims5()?;
    if kh != 3 || kw != 3 || !weight.device().is_cpu() || weight.dtype() != DType::F32 || !weight.is_contiguous() {
        return Ok(None);
    }
    let phases = cpu_kernels::upsample_phase_weights(cpu_slice(weight)?, o, i);
    Ok(Some(from_vec(phases, &[4, o, i, 2, 2])?))
}

/// Nearest ×2 upsample then a 3×3 pad-1 conv (`weight` `[O, I, 1, 3, 3]`) on `[T, I, H, W]`, plus an
/// optional `[T, O, 2H, 2W]` residual. On CPU the upsampled tensor is never built.
pub fn upsample_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    phases: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, i, h, w) = xs.dims4()?;
    let o = weight.dim(0)?;
    if let (Some(phases), true) = (phases, use_cpu_kernels(xs)) {
        let xs = xs.contiguous()?;
        let data = cpu_slice(&xs)?;
        let frames: Vec<&[f32]> = data.chunks(i * h * w).collect();
        let res = residual.map(cpu_slice).transpose()?;
        let mut out = vec![0f32; t * o * 4 * h * w];
        cpu_kernels::upsample2x_conv3x3_frames(
            &mut out,
            &frames,
            cpu_slice(phases)?,
            cpu_slice(bias)?,
            res,
            i,
            o,
            h,
            w,
        );
        return from_vec(out, &[t, o, 2 * h, 2 * w]);
    }
    let up = xs.upsample_nearest2d(2 * h, 2 * w)?;
    let frames: Vec<Tensor> = (0..t).map(|k| up.get(k)).collect::<Result<_>>()?;
    let taps = frames.iter().map(|f| vec![Some(f)]).collect();
    conv_frames(&ConvInputs { taps }, weight, bias, 1, (1, 1, 1, 1), residual)
}

/// `x / max(‖x‖ over C, 1e-12) · scale[c]` (+ SiLU) on `[T, C, H, W]`; `scale = γ·√C` as `[C]`.
pub fn rms_norm(xs: &Tensor, scale: &Tensor, silu: bool) -> Result<Tensor> {
    let (t, c, h, w) = xs.dims4()?;
    if scale.dims1()? != c {
        candle_core::bail!("rms norm over {} channels got input {:?}", scale.dims1()?, xs.shape());
    }
    if use_cpu_kernels(xs) && scale.dtype() == DType::F32 {
        let xs = xs.contiguous()?;
        let mut out = vec![0f32; t * c * h * w];
        cpu_kernels::rms_norm_frames(&mut out, cpu_slice(&xs)?, cpu_slice(scale)?, h * w, silu);
        return from_vec(out, &[t, c, h, w]);
    }
    // Norm in f32 as diffusers does for half inputs, cast back before the scale.
    let dtype = xs.dtype();
    let xf = xs.to_dtype(DType::F32)?;
    let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    let ys = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
    let ys = ys.broadcast_mul(&scale.to_dtype(dtype)?.reshape((1, c, 1, 1))?)?;
    if silu {
        candle_nn::ops::silu(&ys)
    } else {
        Ok(ys)
    }
}

/// Copies frames `start..start+len` of a `[T, …]` tensor into fresh storage, so a cache never keeps a
/// whole chunk alive through a view.
pub fn copy_frames(xs: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    // `force_contiguous` allocates exactly the narrowed elements (`copy` would clone the whole storage).
    xs.narrow(0, start, len)?.force_contiguous()
}
