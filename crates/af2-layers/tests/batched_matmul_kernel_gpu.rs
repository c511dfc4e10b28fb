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
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{cpu, gpu, offered, relative_error, tensor_in, through_f16, values};

/// The kernel's two forms: `a · bᵀ` for `a` `[G, M, K]`, `b` `[G, N, K]`, and the
/// summed-index-major `aᵀ · b` for `a` `[G, K, M]`, `b` `[G, K, N]` (the incoming edges' sum over
/// the first index).
#[derive(Clone, Copy)]
enum Form {
    Nt,
    Tn,
}

impl Form {
    /// The operands' shapes for a `[G, M, N]` product summed over K.
    fn operand_shapes(self, [g, m, n, k]: [usize; 4]) -> ([usize; 3], [usize; 3]) {
        match self {
            Form::Nt => ([g, m, k], [g, n, k]),
            Form::Tn => ([g, k, m], [g, k, n]),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Form::Nt => "batched A · Bᵀ kernel",
            Form::Tn => "batched Aᵀ · B kernel",
        }
    }

    fn supports(self, a: &Tensor<3>, b: &Tensor<3>) -> bool {
        match self {
            Form::Nt => batched_matmul_nt_supports(a, b),
            Form::Tn => batched_matmul_tn_supports(a, b),
        }
    }

    fn run(self, a: &Tensor<3>, b: &Tensor<3>) -> Option<Tensor<3>> {
        match self {
            Form::Nt => try_batched_matmul_nt(a, b),
            Form::Tn => try_batched_matmul_tn(a, b),
        }
    }

    /// The form's product in f32 on the CPU from the f16-rounded inputs.
    fn reference(self, a: &TensorData, b: &TensorData) -> Vec<f32> {
        let device = cpu();
        let a = tensor_in::<3>(&through_f16(a), &device, DType::F32);
        let b = tensor_in::<3>(&through_f16(b), &device, DType::F32);
        let product = match self {
            Form::Nt => a.matmul(b.swap_dims(1, 2)),
            Form::Tn => a.swap_dims(1, 2).matmul(b),
        };
        product.into_data().try_to_vec().unwrap()
    }
}

/// `form` on random f16 operands of the `[G, M, N, K]` product `case` (one launch of the kernel,
/// the `[G, M, N]` output within 2e-3 of the reference: f32 sums on both sides, the kernel's
/// output rounded to f16, a relative step of 2^-11 ~ 4.9e-4); false, having run nothing, where
/// the device does not offer the kernel.
fn check_form(form: Form, device: &Device, case: [usize; 4], seed: u64) -> bool {
    let [g, m, n, _] = case;
    let (a_shape, b_shape) = form.operand_shapes(case);
    let random =
        |shape: [usize; 3], seed| TensorData::new(values(shape.iter().product(), seed, 1.0), shape);
    let (a, b) = (random(a_shape, seed), random(b_shape, seed + 1));
    let (ag, bg) = (
        tensor_in::<3>(&a, device, DType::F16),
        tensor_in::<3>(&b, device, DType::F16),
    );
    if !offered(form.supports(&ag, &bg), form.label()) {
        return false;
    }
    let launches = batched_matmul_launches();
    let kernel = form.run(&ag, &bg).expect("offered");
    assert_eq!(kernel.dims(), [g, m, n]);
    let kernel: Vec<f32> = kernel.cast(DType::F32).into_data().try_to_vec().unwrap();
    assert_eq!(batched_matmul_launches(), launches + 1, "the kernel ran");
    let error = relative_error(&kernel, &form.reference(&a, &b));
    println!(
        "{} {a_shape:?} x {b_shape:?}: relative error {error:.2e}",
        form.label()
    );
    assert!(error <= 2e-3, "{case:?}: relative error {error:.3e}");
    true
}

#[test]
fn kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (G, M, N, K), each at least the 512 output tiles the kernel is offered from, K and N
    // multiples of 8: a design's L=256 sums; unequal sides with K = 40 (a partial second step)
    // and partial tiles; partial tiles on both sides and K = 96 (three steps); matrices of 24,
    // one partial step and tile each.
    let cases = [
        [128, 256, 256, 256],
        [128, 136, 200, 40],
        [512, 100, 96, 96],
        [512, 24, 24, 24],
    ];
    for (i, &case) in cases.iter().enumerate() {
        if !check_form(Form::Nt, &device, case, i as u64 * 10) {
            return;
        }
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
    if !offered(Form::Nt.supports(&ag, &bg), Form::Nt.label()) {
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
    let error = relative_error(&kernel, &Form::Nt.reference(&split(0), &split(1)));
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
    if !offered(Form::Nt.supports(&large, &large), Form::Nt.label()) {
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
        [128, 256, 256, 256],
        [128, 136, 200, 40],
        [512, 24, 24, 100],
    ];
    for (i, &case) in cases.iter().enumerate() {
        if !check_form(Form::Tn, &device, case, 100 + i as u64 * 10) {
            return;
        }
    }
}
