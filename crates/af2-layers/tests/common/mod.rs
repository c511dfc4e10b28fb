//! Helpers shared by the GPU kernel tests: the devices, deterministic inputs, error measures.
#![allow(dead_code)]

use burn::tensor::{DType, Device, Tensor, TensorData, f16};

pub use af2_layers::gpu_for_tests as gpu;

pub fn cpu() -> Device {
    #[allow(deprecated)] // ndarray is the CPU reference backend.
    Device::ndarray()
}

/// Deterministic values in [-scale, scale) (a 64-bit LCG).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Rounds data to f16 and back on the host (IEEE round to nearest), so that the f32 reference
/// sees the kernel's f16 inputs. Not on the GPU: a fused `cast(f16).cast(f32)` may keep the
/// values in f32 registers and never round them.
pub fn through_f16(data: &TensorData) -> TensorData {
    data.clone().convert::<f16>().convert::<f32>()
}

/// `data` as a tensor of `dtype` on `device`, converted on the host (see [`through_f16`]).
pub fn tensor_in<const D: usize>(data: &TensorData, device: &Device, dtype: DType) -> Tensor<D> {
    Tensor::from_data(data.clone().convert_dtype(dtype), (device, dtype))
}

/// `max |kernel - reference| / max |reference|`.
pub fn relative_error(kernel: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(kernel.len(), reference.len());
    let peak = reference
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-30);
    let diff = kernel.iter().zip(reference).fold(0f32, |m, (a, b)| {
        if a.is_nan() {
            f32::INFINITY
        } else {
            m.max((a - b).abs())
        }
    });
    diff / peak
}

/// `supported`, after saying that `what` was not tested where it is not; with
/// `AF2_EXPECT_MMA` set, a device without f16 matrix instructions fails instead.
pub fn offered(supported: bool, what: &str) -> bool {
    if !supported {
        assert!(
            std::env::var_os("AF2_EXPECT_MMA").is_none(),
            "{what}: the kernel was not offered"
        );
        println!("no f16 matrix instructions on this device: {what} not tested");
    }
    supported
}
