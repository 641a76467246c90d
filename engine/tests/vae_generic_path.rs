//! The generic candle op path (what CUDA workers run) must agree with the CPU kernels. Its own test
//! binary because the kernel choice and the im2col budget are process-wide; the tests take a lock
//! so that one test's switch never changes another's run.

mod common;

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, errors, golden};
use tessera_engine::models::wan::vae::{self, ops, AutoencoderKLWan, VaeParts};
use tessera_engine::tensor_io;

static SWITCHES: Mutex<()> = Mutex::new(());

/// Runs `f` on the generic path with an im2col budget of `budget` bytes per conv2d call, then
/// restores the defaults.
fn generic<T>(budget: usize, f: impl FnOnce() -> T) -> T {
    ops::set_kernel_choice(ops::KernelChoice::Generic);
    ops::set_im2col_budget(budget);
    let out = f();
    ops::set_kernel_choice(ops::KernelChoice::Auto);
    ops::set_im2col_budget(ops::DEFAULT_IM2COL_BUDGET);
    out
}

fn decoder() -> (AutoencoderKLWan, Tensor) {
    let dev = Device::Cpu;
    let model = vae::load(&golden("vae22"), VaeParts::Decoder, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&golden("vae22").join("inputs.safetensors"), &dev).unwrap();
    (model, inputs["latents"].clone())
}

#[test]
fn generic_ops_path_matches_cpu_kernels() {
    let _lock = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    let (model, latents) = decoder();
    let mut quiet = |_| {};
    let fast = model.decode(&latents, None, &mut quiet).unwrap();
    let generic = generic(ops::DEFAULT_IM2COL_BUDGET, || model.decode(&latents, None, &mut quiet));
    assert_close("vae22 generic vs cpu kernels", &generic.unwrap(), &fast, 1e-5);
}

/// A budget of one byte makes every conv2d call one output row (the bands of a 352×640 stage at the
/// default budget, 21 rows, are the same code with more rows): each band reads its rows with the
/// padding it needs, and the result matches the CPU kernels as closely as whole frames do.
#[test]
fn banded_generic_path_matches_cpu_kernels() {
    let _lock = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    let (model, latents) = decoder();
    let mut quiet = |_| {};
    let fast = model.decode(&latents, None, &mut quiet).unwrap();
    assert_eq!(generic(1, || ops::band_rows(640, 512, 3, 3, 4)), 1, "a 1-byte budget gives 1-row bands");
    // The default budget at Wan2.2's 352×640, 512-channel stage: 11.8 MB of im2col per row.
    let rows = ops::band_rows(640, 512, 3, 3, 4);
    println!(
        "default budget {} MiB: {rows} rows per conv2d at 640 px × 512 channels",
        ops::DEFAULT_IM2COL_BUDGET >> 20
    );
    assert!(rows * 640 * 512 * 9 * 4 <= ops::DEFAULT_IM2COL_BUDGET && rows >= 16, "{rows}");
    let banded = generic(1, || model.decode(&latents, None, &mut quiet)).unwrap();
    let whole = generic(usize::MAX, || model.decode(&latents, None, &mut quiet)).unwrap();
    let (max_abs, rel) = errors(&banded, &fast);
    let (w_abs, w_rel) = errors(&whole, &fast);
    println!("vae22 1-row bands vs cpu kernels: max-abs {max_abs:.2e} rel {rel:.2e}; whole frames: {w_abs:.2e} / {w_rel:.2e}");
    // Same tolerance as the whole-frame generic path: only the GEMMs' row blocking differs.
    assert_close("vae22 banded generic vs cpu kernels", &banded, &fast, 1e-5);
    assert_close("vae22 whole-frame generic vs cpu kernels", &whole, &fast, 1e-5);
}

#[test]
fn generic_encode_matches_cpu_kernels() {
    let _lock = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let model = vae::load(&golden("vae21"), VaeParts::Encoder, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&golden("vae21").join("inputs.safetensors"), &dev).unwrap();
    let mut quiet = |_| {};
    let fast = model.encode(&inputs["video"], None, &mut quiet).unwrap();
    // One-row bands: the stride-2 downsampling convs read three input rows per band, the last
    // band with its bottom zero row.
    let generic = generic(1, || model.encode(&inputs["video"], None, &mut quiet));
    assert_close("vae21 generic vs cpu kernels (encode mean)", &generic.unwrap().mean, &fast.mean, 1e-5);
}

/// The half-precision VAE CUDA workers run (bf16, `models::vae::run_dtype`), here on the CPU's
/// generic path in f16: candle's CPU matmul has no bf16, and the code path is the same for both
/// half types (every cast goes to the run dtype). The mid-network runs in half precision, the norm
/// statistics and the last norm and conv in f32, and the pixels come out f32. f16 keeps 11
/// significant bits (relative rounding 2⁻¹¹ ≈ 5e-4 per op); over the decoder's ~30 rounded layers
/// that grows to the 1e-3 range, so 1e-2 relative separates rounding from a wrong op (O(1)).
#[test]
fn half_precision_decode_stays_within_rounding_of_f32() {
    let _lock = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let (model, latents) = decoder();
    let mut quiet = |_| {};
    let want = model.decode(&latents, None, &mut quiet).unwrap();
    let half = vae::load(&golden("vae22"), VaeParts::Decoder, DType::F16, &dev).unwrap();
    let got = generic(ops::DEFAULT_IM2COL_BUDGET, || half.decode(&latents, None, &mut quiet)).unwrap();
    assert_eq!(got.dtype(), DType::F32, "pixels leave the half-precision decoder in f32");
    assert_close("vae22 f16 decode vs f32", &got, &want, 1e-2);
}
