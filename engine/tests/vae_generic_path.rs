//! The generic candle op path (what CUDA workers run) must agree with the CPU kernels. Its own test
//! binary because the kernel choice is process-wide.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, golden};
use tessera_engine::models::wan::vae::{self, ops, VaeParts};
use tessera_engine::tensor_io;

#[test]
fn generic_ops_path_matches_cpu_kernels() {
    let dev = Device::Cpu;
    let model = vae::load(&golden("vae22"), VaeParts::Decoder, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&golden("vae22").join("inputs.safetensors"), &dev).unwrap();
    let mut quiet = |_| {};
    let fast = model.decode(&inputs["latents"], None, &mut quiet).unwrap();
    ops::set_kernel_choice(ops::KernelChoice::Generic);
    let generic = model.decode(&inputs["latents"], None, &mut quiet);
    ops::set_kernel_choice(ops::KernelChoice::Auto);
    assert_close("vae22 generic vs cpu kernels", &generic.unwrap(), &fast, 1e-5);
}

#[test]
fn generic_encode_matches_cpu_kernels() {
    let dev = Device::Cpu;
    let model = vae::load(&golden("vae21"), VaeParts::Encoder, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&golden("vae21").join("inputs.safetensors"), &dev).unwrap();
    let mut quiet = |_| {};
    let fast = model.encode(&inputs["video"], None, &mut quiet).unwrap();
    ops::set_kernel_choice(ops::KernelChoice::Generic);
    let generic = model.encode(&inputs["video"], None, &mut quiet);
    ops::set_kernel_choice(ops::KernelChoice::Auto);
    assert_close("vae21 generic vs cpu kernels (encode mean)", &generic.unwrap().mean, &fast.mean, 1e-5);
}
