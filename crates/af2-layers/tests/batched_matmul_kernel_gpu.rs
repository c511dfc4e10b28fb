//! The tensor-core batched `A · Bᵀ` and `Aᵀ · B` kernel (the triangle multiplication's sums) against an f32
//! product of the same f16 inputs on the CPU, on a GPU (`AF2_GPU_TESTS=1`; without it the tests
//! say they were skipped and pass). `AF2_EXPECT_MMA=1` makes a device without f16 matrix
//! instructions a failure instead of a skip.
#![cfg(feature = "cube")]

mod common;

use af2_layers::batched_matmul_kernel::{
    batched_matmul_launches, batched_matmul_nt_supports, batched_matmul_tn_supports,
    try_batched_matmul_nt, try_batched_matmul_tn,
};
use burn::tensor::{DType, TensorData};
use common::{cpu, gpu, offered, relative_error, tensor_in, through_f16, values};

/// `a · bᵀ` in f32 on the CPU from the f16-rounded inputs.
fn reference(a: &TensorData, b: &TensorData) -> Vec<f32> {
    let device = cpu();
    let a = tensor_in::<3>(&through_f16(a), &device, DType::F32);
    let b = tensor_in::<3>(&through_f16(b), &device, DType::F32);
    a.matmul(b.swap_dims(1, 2))
        .into_data()
        .try_to_vec()
        .unwrap()
}

#[test]
fn kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (G, M, N, K), each at least the 512 output tiles the kernel is offered from, K and N
    // multiples of 8: a design's L=256 sums; unequal sides with K = 40 (a partial second step)
    // and partial tiles; partial tiles on both sides and K = 96 (three steps); matrices of 24,
    // one partial step and tile each.
    let cases = [
        (128, 256, 256, 256),
        (128, 136, 200, 40),
        (512, 100, 96, 96),
        (512, 24, 24, 24),
    ];
    for (seed, &(g, m, n, k)) in cases.iter().enumerate() {
        let seed = seed as u64 * 10;
        let a = TensorData::new(values(g * m * k, seed, 1.0), [g, m, k]);
        let b = TensorData::new(values(g * n * k, seed + 1, 1.0), [g, n, k]);
        let (ag, bg) = (
            tensor_in::<3>(&a, &device, DType::F16),
            tensor_in::<3>(&b, &device, DType::F16),
        );
        if !offered(
            batched_matmul_nt_supports(&ag, &bg),
            "batched A · Bᵀ kernel",
        ) {
            return;
        }
        let launches = batched_matmul_launches();
        let kernel = try_batched_matmul_nt(&ag, &bg).expect("offered");
        let kernel: Vec<f32> = kernel.cast(DType::F32).into_data().try_to_vec().unwrap();
        assert_eq!(batched_matmul_launches(), launches + 1, "the kernel ran");
        // Same f16 inputs; f32 accumulation on both sides, the kernel's output rounded to f16
        // (a relative step of 2^-11 ~ 4.9e-4).
        let error = relative_error(&kernel, &reference(&a, &b));
        println!("batched [{g}, {m}, {k}] x [{g}, {n}, {k}]ᵀ: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "[{g}, {m}, {n}, {k}]: relative error {error:.3e}"
        );
    }
}

/// The operands as the triangle multiplication passes them: the two halves of one `[2G, M·K]`
/// tensor, each viewed as `[G, M, K]`.
#[test]
fn kernel_takes_halves_of_one_tensor() {
    let Some(device) = gpu() else { return };
    let (g, l) = (128, 256);
    let both = TensorData::new(values(2 * g * l * l, 7, 1.0), [2 * g, l * l]);
    let gpu_both = tensor_in::<2>(&both, &device, DType::F16);
    let half = |i: usize| gpu_both.clone().narrow(0, i * g, g).reshape([g, l, l]);
    let (ag, bg) = (half(0), half(1));
    if !offered(
        batched_matmul_nt_supports(&ag, &bg),
        "batched A · Bᵀ kernel",
    ) {
        return;
    }
    let kernel: Vec<f32> = try_batched_matmul_nt(&ag, &bg)
        .expect("offered")
        .cast(DType::F32)
        .into_data()
        .try_to_vec()
        .unwrap();
    let values = both.try_to_vec::<f32>().unwrap();
    let split = |i: usize| {
        TensorData::new(
            values[i * g * l * l..(i + 1) * g * l * l].to_vec(),
            [g, l, l],
        )
    };
    let error = relative_error(&kernel, &reference(&split(0), &split(1)));
    println!("halves of one tensor [{g}, {l}, {l}]: relative error {error:.2e}");
    assert!(error <= 2e-3, "relative error {error:.3e}");
}

/// Fewer than 512 output tiles (one design at L=128), and lengths that are not multiples of 8
/// (a 250-residue complex), stay on Burn's matmul.
#[test]
fn small_or_unaligned_products_are_not_offered() {
    let Some(device) = gpu() else { return };
    let random = |[g, l]: [usize; 2]| {
        let data = TensorData::new(values(g * l * l, l as u64, 1.0), [g, l, l]);
        tensor_in::<3>(&data, &device, DType::F16)
    };
    let large = random([128, 256]);
    if !offered(
        batched_matmul_nt_supports(&large, &large),
        "batched A · Bᵀ kernel",
    ) {
        return;
    }
    for (g, l) in [(128, 128), (1024, 250)] {
        let x = random([g, l]);
        assert!(!batched_matmul_nt_supports(&x, &x), "[{g}, {l}, {l}]");
        assert!(try_batched_matmul_nt(&x, &x).is_none(), "[{g}, {l}, {l}]");
    }
}

/// The summed-index-major form, `aᵀ · b` for `a` `[G, K, M]` and `b` `[G, K, N]` (the incoming
/// edges' sum over the first index), against the f32 product of the same f16 inputs.
#[test]
fn summed_index_major_form_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (G, M, N, K): a design's L=256 incoming sum; unequal sides with K = 40 (a partial
    // second step) and partial tiles; M and N of 24 with K = 100 (partial steps, K not a
    // multiple of 8: only the rows, of M and N, are vectors).
    let cases = [
        (128, 256, 256, 256),
        (128, 136, 200, 40),
        (512, 24, 24, 100),
    ];
    for (seed, &(g, m, n, k)) in cases.iter().enumerate() {
        let seed = 100 + seed as u64 * 10;
        let a = TensorData::new(values(g * k * m, seed, 1.0), [g, k, m]);
        let b = TensorData::new(values(g * k * n, seed + 1, 1.0), [g, k, n]);
        let (ag, bg) = (
            tensor_in::<3>(&a, &device, DType::F16),
            tensor_in::<3>(&b, &device, DType::F16),
        );
        if !offered(
            batched_matmul_tn_supports(&ag, &bg),
            "batched Aᵀ · B kernel",
        ) {
            return;
        }
        let launches = batched_matmul_launches();
        let kernel = try_batched_matmul_tn(&ag, &bg).expect("offered");
        assert_eq!(kernel.dims(), [g, m, n]);
        let kernel: Vec<f32> = kernel.cast(DType::F32).into_data().try_to_vec().unwrap();
        assert_eq!(batched_matmul_launches(), launches + 1, "the kernel ran");
        let cpu_device = cpu();
        let a_t = tensor_in::<3>(&through_f16(&a), &cpu_device, DType::F32);
        let b_t = tensor_in::<3>(&through_f16(&b), &cpu_device, DType::F32);
        let expected: Vec<f32> = a_t
            .swap_dims(1, 2)
            .matmul(b_t)
            .into_data()
            .try_to_vec()
            .unwrap();
        // As the other form: f32 sums, the output rounded to f16.
        let error = relative_error(&kernel, &expected);
        println!("batched [{g}, {k}, {m}]ᵀ x [{g}, {k}, {n}]: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "[{g}, {m}, {n}, {k}]: relative error {error:.3e}"
        );
    }
}
