//! The CubeCL LayerNorm kernel against the reference LayerNorm, on a GPU (`AF2_GPU_TESTS=1`;
//! without it the tests say they were skipped and pass). The reference runs on the CPU
//! (ndarray, exact f32) from the same inputs.
#![cfg(feature = "cube")]

mod common;

use af2_layers::layer_norm_kernel::{
    kernel_enabled, kernel_supports, layer_norm_kernel, try_layer_norm_channel_major,
    try_layer_norm_with_pair_bias,
};
use af2_layers::{LayerNorm, LayerNormConfig};
use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{cpu, gpu, relative_error, tensor_in, values};

/// A LayerNorm of width `d` with non-trivial scale and offset, on `device` in `dtype`.
fn layer_norm(d: usize, device: &Device, dtype: DType) -> LayerNorm {
    let mut norm = LayerNormConfig::new(d).init(device);
    let load =
        |data: Vec<f32>| Param::from_tensor(tensor_in(&TensorData::new(data, [d]), device, dtype));
    norm.gamma = load(values(d, 5, 1.0).into_iter().map(|x| 1.0 + x).collect());
    norm.beta = load(values(d, 6, 0.5));
    norm
}

/// `[a, b, c, d]` inputs whose rows have means far from zero (as residual streams do), so that a
/// one-pass variance would lose digits.
fn input(shape: [usize; 4], seed: u64) -> TensorData {
    let n = shape.iter().product();
    let offsets = values(n / shape[3], seed + 1, 50.0);
    let data = values(n, seed, 3.0)
        .into_iter()
        .enumerate()
        .map(|(i, x)| x + offsets[i / shape[3]])
        .collect();
    TensorData::new(data, shape)
}

/// The LayerNorm of `rows` (`[R, d]` flattened, the last axis normalised) in f64: the exact
/// result of the f32 (or f16-rounded) inputs.
fn exact(rows: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    let d = gamma.len();
    rows.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / d as f64;
            let var = row
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / d as f64;
            let inv_std = 1.0 / (var + 1e-5).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(&x, (&g, &b))| {
                    ((f64::from(x) - mean) * inv_std * f64::from(g) + f64::from(b)) as f32
                })
        })
        .collect()
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Relative errors (to the peak output) of the kernel on the GPU in `dtype` (from a
/// `swap_dims(1, 2)` view when `swapped`) and of the Burn reference on the CPU in f32, both
/// against [`exact`] from the same (rounded) inputs.
fn errors(data: &TensorData, dtype: DType, swapped: bool, gpu: &Device) -> (f32, f32) {
    let d = data.shape()[3];
    let view = |t: Tensor<4>| if swapped { t.swap_dims(1, 2) } else { t };
    let x = view(tensor_in(data, gpu, dtype));
    let norm = layer_norm(d, gpu, dtype);
    assert!(kernel_supports(&x));
    // What the kernel sees, in f32 and in the order of the (possibly swapped) view.
    let seen = to_vec(x.clone());
    let (gamma, beta) = (to_vec(norm.gamma.val()), to_vec(norm.beta.val()));
    let kernel = to_vec(layer_norm_kernel(
        x,
        norm.gamma.val(),
        norm.beta.val(),
        1e-5,
    ));
    let cpu = cpu();
    let mut reference = layer_norm(d, &cpu, DType::F32);
    let load = |v: &[f32]| {
        Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(v.to_vec(), [d]),
            &cpu,
        ))
    };
    reference.gamma = load(&gamma);
    reference.beta = load(&beta);
    let rows = seen.len() / d;
    let burn = to_vec(reference.forward_reference(Tensor::<2>::from_data(
        TensorData::new(seen.clone(), [rows, d]),
        &cpu,
    )));
    let exact = exact(&seen, &gamma, &beta);
    let error = relative_error(&kernel, &exact);
    if error > 1e-6 {
        let worst = (0..exact.len())
            .max_by(|&i, &j| {
                (kernel[i] - exact[i])
                    .abs()
                    .total_cmp(&(kernel[j] - exact[j]).abs())
            })
            .unwrap_or(0);
        let row = &seen[worst / d * d..][..d];
        eprintln!(
            "worst element {worst} (row {}, column {}): kernel {}, exact {}, gamma {}, beta {}, \
             row mean {}, row starts {:?}",
            worst / d,
            worst % d,
            kernel[worst],
            exact[worst],
            gamma[worst % d],
            beta[worst % d],
            row.iter().sum::<f32>() / d as f32,
            &row[..4.min(d)]
        );
    }
    (error, relative_error(&burn, &exact))
}

#[test]
fn kernel_matches_reference_f32() {
    let Some(device) = gpu() else { return };
    for (shape, swapped) in [
        ([2, 5, 7, 128], false),
        ([1, 3, 33, 256], false),
        ([1, 9, 11, 64], true),
        ([1, 4, 6, 64], false),
        ([1, 1, 5, 384], false),
        ([1, 2, 3, 48], false),
        ([1, 3, 5, 22], false),
        ([1, 2, 2, 7], false),
        ([1, 1, 1, 1], false),
    ] {
        let (kernel, burn) = errors(&input(shape, 3), DType::F32, swapped, &device);
        eprintln!("{shape:?} swapped {swapped}: kernel {kernel:.2e}, Burn reference {burn:.2e}");
        // f32 outputs of order 1-4 from rows with offsets of up to 50: a few f32 ulp of the
        // output, and never worse than the f32 reference the model used before the kernel.
        assert!(
            kernel <= 1e-6_f32.max(burn),
            "{shape:?} swapped {swapped}: kernel {kernel}, Burn reference {burn}"
        );
    }
}

#[test]
fn kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // Vectors of 4 (128 wide; 64 wide, rows of a swapped view), of 2 (18 wide) and single
    // elements (33 wide, swapped).
    for (shape, swapped) in [
        ([2, 4, 9, 128], false),
        ([1, 3, 4, 18], false),
        ([1, 5, 3, 64], true),
        ([1, 4, 5, 33], true),
    ] {
        let (kernel, _) = errors(&input(shape, 11), DType::F16, swapped, &device);
        eprintln!("f16 {shape:?} swapped {swapped}: kernel {kernel:.2e}");
        // Statistics in f32; the output is rounded to f16 (2^-11 relative).
        assert!(kernel < 1e-3, "{shape:?}: relative error {kernel}");
    }
}

#[test]
fn layer_norm_module_uses_the_kernel_when_enabled() {
    let Some(device) = gpu() else { return };
    let data = input([1, 6, 6, 32], 21);
    let norm = layer_norm(32, &device, DType::F32);
    let x = Tensor::<4>::from_data(data, &device);
    let through_module = to_vec(norm.forward(x.clone()));
    let kernel = to_vec(layer_norm_kernel(
        x.clone(),
        norm.gamma.val(),
        norm.beta.val(),
        1e-5,
    ));
    let reference = to_vec(norm.forward_reference(x));
    if kernel_enabled() {
        // The kernel is deterministic: through the module it gives the same bits.
        assert!(
            through_module == kernel,
            "the kernel is enabled but the module's LayerNorm is not the kernel's"
        );
    } else {
        // Burn's ops may fuse differently inside another graph: equal to f32 rounding.
        let error = relative_error(&through_module, &reference);
        assert!(
            error <= 1e-6,
            "module vs reference: relative error {error:.2e}"
        );
    }
}

#[test]
fn rows_of_any_rank_and_swapped_views_give_the_same_bits() {
    let Some(device) = gpu() else { return };
    let data = input([2, 5, 7, 64], 31);
    let norm = layer_norm(64, &device, DType::F32);
    let x = Tensor::<4>::from_data(data, &device);
    let run = |x: Tensor<4>| {
        to_vec(layer_norm_kernel(
            x,
            norm.gamma.val(),
            norm.beta.val(),
            1e-5,
        ))
    };
    let four = run(x.clone());
    let two = to_vec(layer_norm_kernel(
        x.clone().reshape([70, 64]),
        norm.gamma.val(),
        norm.beta.val(),
        1e-5,
    ));
    let three = to_vec(layer_norm_kernel(
        x.clone().reshape([10, 7, 64]),
        norm.gamma.val(),
        norm.beta.val(),
        1e-5,
    ));
    assert!(two == four && three == four, "row layouts disagree");
    // A swapped view, read in place, against the same rows copied into that order first.
    let swapped = run(x.clone().swap_dims(1, 2));
    let copied = run(Tensor::<4>::from_data(
        x.swap_dims(1, 2).into_data(),
        &device,
    ));
    assert!(
        swapped == copied,
        "a swapped view normalises differently from its copy"
    );
}

/// The channel-major kernel (`[D, R]` in, `[R, D]` out) against the exact LayerNorm of the same
/// rows; on devices without 32-unit planes it is not offered (with `AF2_EXPECT_MMA=1`, as on
/// the H100 runs, it must be).
#[test]
fn channel_major_kernel_matches_exact() {
    let Some(device) = gpu() else { return };
    for (d, rows, dtype) in [
        (128, 300, DType::F32),
        (16, 130, DType::F32),
        (64, 97, DType::F32),
        (100, 64, DType::F32),
        (128, 260, DType::F16),
        (64, 203, DType::F16),
    ] {
        let data = input([1, 1, rows, d], 41);
        let x_rows = tensor_in::<4>(&data, &device, dtype).reshape([rows, d]);
        let seen = to_vec(x_rows.clone());
        let channel_major =
            Tensor::<2>::from_data(x_rows.transpose().into_data(), &device).cast(dtype);
        let norm = layer_norm(d, &device, dtype);
        let offered =
            try_layer_norm_channel_major(&channel_major, &norm.gamma.val(), &norm.beta.val(), 1e-5);
        let Some(out) = offered else {
            assert!(
                std::env::var("AF2_EXPECT_MMA").is_err(),
                "the channel-major kernel is not offered"
            );
            eprintln!("channel-major kernel not offered on this device");
            return;
        };
        assert_eq!(out.dims(), [rows, d]);
        let (gamma, beta) = (to_vec(norm.gamma.val()), to_vec(norm.beta.val()));
        let error = relative_error(&to_vec(out.clone()), &exact(&seen, &gamma, &beta));
        eprintln!("channel-major d {d}, rows {rows}, {dtype:?}: relative error {error:.2e}");
        // f32: a few ulp of the output, as the row kernel; f16: the output's rounding.
        let limit = if dtype == DType::F32 { 1e-6 } else { 1e-3 };
        assert!(error <= limit, "d {d}, rows {rows}: relative error {error}");
        // The module's channel-major form takes the kernel: the same bits.
        let through_module = to_vec(norm.forward_channel_major(channel_major));
        assert!(through_module == to_vec(out), "module and kernel disagree");
    }
}

/// Wider than the columns kernel takes: `forward_channel_major` falls back to the row kernel on
/// the transposed view, still the exact LayerNorm.
#[test]
fn channel_major_fallback_matches_exact() {
    let Some(device) = gpu() else { return };
    let (d, rows) = (160, 50);
    let data = input([1, 1, rows, d], 43);
    let x_rows = Tensor::<4>::from_data(data, &device).reshape([rows, d]);
    let seen = to_vec(x_rows.clone());
    let channel_major = Tensor::<2>::from_data(x_rows.transpose().into_data(), &device);
    let norm = layer_norm(d, &device, DType::F32);
    let (gamma_t, beta_t) = (norm.gamma.val(), norm.beta.val());
    assert!(try_layer_norm_channel_major(&channel_major, &gamma_t, &beta_t, 1e-5).is_none());
    let out = norm.forward_channel_major(channel_major);
    assert_eq!(out.dims(), [rows, d]);
    let (gamma, beta) = (to_vec(gamma_t), to_vec(beta_t));
    let error = relative_error(&to_vec(out), &exact(&seen, &gamma, &beta));
    eprintln!("channel-major fallback d {d}: relative error {error:.2e}");
    assert!(error <= 1e-6, "relative error {error}");
}

/// The pair bias projected inside the LayerNorm kernel against the exact LayerNorm of the same
/// (f16) rows, rounded to f16 as the kernel projects it, times the weights in f64; the
/// normalised rows it writes beside the bias are the plain kernel's, bit for bit.
#[test]
fn pair_bias_from_the_kernel_matches_exact() {
    let Some(device) = gpu() else { return };
    // 128 wide with 4 and 8 heads (triangle and MSA row attention), a swapped view (the ending
    // node), 64 wide (the template stack), 256 wide (two vectors a lane), 30 wide (2-element
    // vectors, columns past D in the last lane).
    for (shape, heads, swapped, normalised) in [
        ([1, 24, 24, 128], 4, false, true),
        ([2, 9, 11, 128], 8, false, false),
        ([1, 17, 17, 128], 4, true, true),
        ([1, 12, 12, 64], 4, false, true),
        ([1, 5, 7, 256], 3, false, true),
        ([2, 6, 5, 30], 5, true, false),
        // 12 heads: a cube's projections take two passes of its units to write.
        ([1, 20, 20, 128], 12, false, false),
    ] {
        let d = shape[3];
        let view = |t: Tensor<4>| if swapped { t.swap_dims(1, 2) } else { t };
        let x = view(tensor_in(&input(shape, 51), &device, DType::F16));
        let norm = layer_norm(d, &device, DType::F16);
        let weights_data = values(d * heads, 52, (d as f32).powf(-0.5));
        let weights = tensor_in::<2>(
            &TensorData::new(weights_data.clone(), [d, heads]),
            &device,
            DType::F16,
        );
        let (gamma_t, beta_t) = (norm.gamma.val(), norm.beta.val());
        let Some((normed, bias)) =
            try_layer_norm_with_pair_bias(&x, &gamma_t, &beta_t, 1e-5, &weights, normalised)
        else {
            assert!(
                std::env::var("AF2_EXPECT_MMA").is_err(),
                "the fused pair bias is not offered"
            );
            eprintln!("fused pair bias not offered on this device");
            return;
        };
        let [b, q, k, _] = x.dims();
        assert_eq!(bias.dims(), [b, heads, q, k]);
        assert_eq!(normed.is_some(), normalised);
        let plain = to_vec(layer_norm_kernel(
            x.clone(),
            gamma_t.clone(),
            beta_t.clone(),
            1e-5,
        ));
        if let Some(normed) = normed {
            assert!(to_vec(normed) == plain, "{shape:?}: normalised rows differ");
        }
        // Exact normalised rows, rounded to f16 as the kernel rounds them before projecting.
        let seen = to_vec(x);
        let (gamma, beta) = (to_vec(gamma_t), to_vec(beta_t));
        let rounded: Vec<f32> = exact(&seen, &gamma, &beta)
            .into_iter()
            .map(|v| burn::tensor::f16::from_f32(v).to_f32())
            .collect();
        let weights_seen = to_vec(weights);
        let pairs = q * k;
        let mut expected = vec![0f32; b * heads * pairs];
        for (row, values) in rounded.chunks(d).enumerate() {
            for h in 0..heads {
                let dot: f64 = values
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| f64::from(v) * f64::from(weights_seen[c * heads + h]))
                    .sum();
                expected[(row / pairs * heads + h) * pairs + row % pairs] = dot as f32;
            }
        }
        let error = relative_error(&to_vec(bias), &expected);
        eprintln!(
            "pair bias {shape:?} heads {heads} swapped {swapped}: relative error {error:.2e}"
        );
        // The exact rows' f16 rounding can differ by one ulp where the kernel's f32 statistics
        // land on the other side of a rounding boundary (2^-11 of one term), and the bias is
        // rounded to f16 (2^-11 relative): 2e-3 of the peak bias, as the other f16 kernels.
        assert!(
            error < 2e-3,
            "{shape:?} heads {heads}: relative error {error}"
        );
    }
}
