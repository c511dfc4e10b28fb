//! The tensor-core linear kernel against an f32 product of the same f16 inputs, on a GPU
//! (`AF2_GPU_TESTS=1`; without it the tests say they were skipped and pass). Where the device
//! has no f16 matrix instructions the kernel is not offered; `AF2_EXPECT_MMA=1` makes that a
//! failure instead of a skip.
#![cfg(feature = "cube")]

mod common;

use af2_layers::linear::{Epilogue, matmul_bias};
use af2_layers::linear_kernel::{
    EDGE_BLOCK, kernel_supports, linear_kernel, linear_kernel_transposed,
    transposed_kernel_supports, try_gated_edges_kernel, try_linear_kernel_with,
};
use burn::tensor::{DType, Tensor, TensorData};
use common::{cpu, gpu, offered, relative_error, tensor_in, through_f16, values};

/// `x [m, k] · w [k, n] (+ b)` in f32 on the CPU from the f16-rounded inputs.
fn reference(x: &TensorData, w: &TensorData, b: Option<&TensorData>) -> Vec<f32> {
    let b = b.map(through_f16);
    reference_f32(&through_f16(x), &through_f16(w), b.as_ref())
}

/// A kernel output's values on the host, as f32.
fn host_f32(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec().unwrap()
}

#[test]
fn kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (rows, in, out, bias): the pair stack's 128 -> 128 and 128 -> 512 layers with a row
    // count that ends inside a 64-row tile, the template stack's 64 channels without bias, a
    // short tile, three 64-column blocks, and enough rows that cubes walk several tiles; then
    // inputs taken in 128-wide chunks: the MSA stack's 256 -> 1024 and 1024 -> 256, the pair
    // transition's 512 -> 128 over several tiles a cube, 384 -> 64 without bias; last, 16 and
    // 48 input channels into a 128-column block (input vectors a tile not a multiple of the 256
    // units of 8 planes: a partial staging pass); then products of enough rows that two plane
    // groups split each tile's stripes (128- and 64-column blocks).
    let cases = [
        (1000, 128, 128, true),
        (64, 128, 512, true),
        (4101, 64, 64, false),
        (5, 16, 64, true),
        (100, 32, 192, true),
        (70_000, 128, 128, false),
        (300, 256, 1024, true),
        (257, 1024, 256, true),
        (70_001, 512, 128, true),
        (1000, 384, 64, false),
        (300, 16, 128, true),
        (130, 48, 128, true),
        (140_001, 128, 128, true),
        (131_072, 64, 64, false),
    ];
    for (seed, &(m, k, n, with_bias)) in cases.iter().enumerate() {
        let seed = seed as u64 * 10;
        let x = TensorData::new(values(m * k, seed, 2.0), [m, k]);
        let w = TensorData::new(values(k * n, seed + 1, (k as f32).powf(-0.5)), [k, n]);
        let b = with_bias.then(|| TensorData::new(values(n, seed + 2, 1.0), [n]));
        let xg = tensor_in::<2>(&x, &device, DType::F16);
        let wg = tensor_in::<2>(&w, &device, DType::F16);
        if !kernel_supports(&xg, &wg) {
            assert!(
                std::env::var_os("AF2_EXPECT_MMA").is_none(),
                "[{m}, {k}] x [{k}, {n}]: the kernel was not offered"
            );
            println!("no f16 matrix instructions on this device: linear kernel not tested");
            return;
        }
        let bg = b.as_ref().map(|b| tensor_in::<1>(b, &device, DType::F16));
        let kernel = linear_kernel(xg.clone(), wg.clone(), bg.clone());
        let kernel: Vec<f32> = kernel.cast(DType::F32).into_data().try_to_vec().unwrap();
        let expected = reference(&x, &w, b.as_ref());
        // Same f16 inputs; f32 accumulation on both sides, the kernel's output rounded to f16
        // (a relative step of 2^-11 ~ 4.9e-4).
        let error = relative_error(&kernel, &expected);
        println!("linear [{m}, {k}] x [{k}, {n}] bias {with_bias}: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "[{m}, {k}] x [{k}, {n}]: relative error {error:.3e}"
        );
        // The public entry point takes the same path.
        let via_entry: Vec<f32> = matmul_bias(xg, wg, bg)
            .cast(DType::F32)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(via_entry, kernel);
    }
}

#[test]
fn kernel_refuses_what_it_cannot_take() {
    let Some(device) = gpu() else { return };
    let f16 = |shape: [usize; 2]| Tensor::<2>::zeros(shape, (&device, DType::F16));
    let f32 = |shape: [usize; 2]| Tensor::<2>::zeros(shape, (&device, DType::F32));
    // f32, more than 128 inputs, inputs not in 16s, outputs not in 64s.
    assert!(!kernel_supports(&f32([64, 128]), &f32([128, 128])));
    assert!(!kernel_supports(&f16([64, 192]), &f16([192, 128])));
    assert!(!kernel_supports(&f16([64, 4096]), &f16([4096, 128])));
    assert!(!kernel_supports(&f16([64, 24]), &f16([24, 128])));
    assert!(!kernel_supports(&f16([64, 128]), &f16([128, 4])));
    assert!(!kernel_supports(&f16([64, 128]), &f16([128, 48])));
    let cpu_x = Tensor::<2>::zeros([64, 128], (&cpu(), DType::F32));
    assert!(!kernel_supports(&cpu_x, &cpu_x.clone().reshape([128, 64])));
}

#[test]
fn transposed_kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // The triangle multiplication's four edge projections (128 -> 4 x 128) over rows that end
    // inside a 64-row tile, the template stack's (64 -> 4 x 64), a 256-wide input taken in
    // chunks, and enough rows for two plane groups (from 65,536) with cubes that walk several
    // tiles.
    for (seed, &(m, k, n)) in [
        (1000, 128, 512),
        (4104, 64, 256),
        (1000, 256, 128),
        (140_008, 128, 128),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 + seed as u64 * 10;
        let x = TensorData::new(values(m * k, seed, 2.0), [m, k]);
        let w = TensorData::new(values(k * n, seed + 1, (k as f32).powf(-0.5)), [k, n]);
        let b = TensorData::new(values(n, seed + 2, 1.0), [n]);
        let xg = tensor_in::<2>(&x, &device, DType::F16);
        let wg = tensor_in::<2>(&w, &device, DType::F16);
        if !transposed_kernel_supports(&xg, &wg) {
            assert!(
                std::env::var_os("AF2_EXPECT_MMA").is_none(),
                "[{m}, {k}] x [{k}, {n}]: the transposed kernel was not offered"
            );
            println!("no f16 matrix instructions on this device: linear kernel not tested");
            return;
        }
        let bg = tensor_in::<1>(&b, &device, DType::F16);
        let kernel = linear_kernel_transposed(xg, wg, bg);
        assert_eq!(kernel.dims(), [n, m]);
        let kernel: Vec<f32> = kernel.cast(DType::F32).into_data().try_to_vec().unwrap();
        let expected = reference(&x, &w, Some(&b));
        let expected_t: Vec<f32> = (0..n * m).map(|i| expected[(i % m) * n + i / m]).collect();
        let error = relative_error(&kernel, &expected_t);
        println!("transposed linear [{m}, {k}] x [{k}, {n}]: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "[{m}, {k}] x [{k}, {n}] transposed: relative error {error:.3e}"
        );
    }
    // Rows that do not fill whole 16-byte output vectors are refused.
    let f16 = |shape: [usize; 2]| Tensor::<2>::zeros(shape, (&device, DType::F16));
    assert!(!transposed_kernel_supports(
        &f16([1001, 128]),
        &f16([128, 512])
    ));
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn epilogues_match_reference_f16() {
    let Some(device) = gpu() else { return };
    // (relu, gate, residual, K, N, M): the transitions' ReLU, the triangle multiplication's gate
    // and residual, the triangle attention's residual, each on 128-column blocks, and on
    // 64-column blocks (the template stack's width); rows ending inside a 64-row tile; then
    // the 128-channel ones over enough rows that two plane groups split each tile's stripes.
    let few = 1000;
    let many = 140_001;
    for (seed, (relu, gated, added, k, n, m)) in [
        (true, false, false, 128, 128, few),
        (false, true, true, 128, 128, few),
        (false, false, true, 128, 128, few),
        (true, false, false, 64, 64, few),
        (false, true, true, 64, 64, few),
        (false, false, true, 512, 128, few),
        (true, false, false, 256, 1024, few),
        (true, false, false, 128, 128, many),
        (false, true, true, 128, 128, many),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 300 + seed as u64 * 10;
        let data = |len: usize, s: u64, scale: f32, shape: Vec<usize>| {
            TensorData::new(values(len, seed + s, scale), shape)
        };
        let x = data(m * k, 0, 2.0, vec![m, k]);
        let w = data(k * n, 1, (k as f32).powf(-0.5), vec![k, n]);
        let b = data(n, 2, 1.0, vec![n]);
        let gate = data(m * n, 3, 4.0, vec![m, n]);
        let residual = data(m * n, 4, 8.0, vec![m, n]);
        let on_gpu = |d: &TensorData| tensor_in::<2>(d, &device, DType::F16);
        let epilogue = Epilogue {
            relu,
            gate: gated.then(|| on_gpu(&gate)),
            residual: added.then(|| on_gpu(&residual)),
            ..Epilogue::default()
        };
        let bias = tensor_in::<1>(&b, &device, DType::F16);
        let what =
            format!("epilogue relu {relu} gate {gated} residual {added} [{m}, {k}] x [{k}, {n}]");
        let out = try_linear_kernel_with(&on_gpu(&x), &on_gpu(&w), Some(&bias), &epilogue);
        if !offered(out.is_some(), &what) {
            return;
        }
        let out = host_f32(out.unwrap());
        let plain = reference(&x, &w, Some(&b));
        let (gate, residual) = (
            through_f16(&gate).try_to_vec::<f32>().unwrap(),
            through_f16(&residual).try_to_vec::<f32>().unwrap(),
        );
        let expected: Vec<f32> = plain
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let mut y = if relu { y.max(0.0) } else { y };
                if gated {
                    y *= sigmoid(gate[i]);
                }
                if added {
                    y += residual[i];
                }
                y
            })
            .collect();
        if relu {
            let negative = plain.iter().filter(|&&y| y < 0.0).count();
            assert!(
                negative > m * n / 4,
                "the ReLU case needs negative products"
            );
        }
        // The product rounded to f16 before the epilogue, the result once more.
        let error = relative_error(&out, &expected);
        println!("{what}: relative error {error:.2e}");
        assert!(error <= 2e-3, "{what}: relative error {error:.3e}");
    }
}

#[test]
fn input_gate_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (K, N, gate row width, first gate column, residual, M): a triangle attention's output
    // projection (4 heads of 32, gates in the last quarter of its 512-wide projection) with
    // and without the residual, and the MSA attentions' (8 heads of 32: 256 inputs, taken in
    // 128-wide chunks); rows ending inside a 64-row tile; the first again over enough rows that
    // two plane groups split each tile's stripes.
    for (seed, (k, n, width, first, added, m)) in [
        (128, 128, 512, 384, true, 1000),
        (128, 128, 512, 384, false, 1000),
        (256, 256, 1024, 768, true, 1000),
        (256, 256, 1024, 768, false, 1000),
        (128, 128, 512, 384, true, 140_001),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 700 + seed as u64 * 10;
        let data = |len: usize, s: u64, scale: f32, shape: Vec<usize>| {
            TensorData::new(values(len, seed + s, scale), shape)
        };
        let x = data(m * k, 0, 2.0, vec![m, k]);
        let w = data(k * n, 1, (k as f32).powf(-0.5), vec![k, n]);
        let b = data(n, 2, 1.0, vec![n]);
        let gates = data(m * width, 3, 4.0, vec![m, width]);
        let residual = data(m * n, 4, 8.0, vec![m, n]);
        let on_gpu = |d: &TensorData| tensor_in::<2>(d, &device, DType::F16);
        let epilogue = Epilogue {
            input_gate: Some((on_gpu(&gates), first)),
            residual: added.then(|| on_gpu(&residual)),
            ..Epilogue::default()
        };
        let bias = tensor_in::<1>(&b, &device, DType::F16);
        let what = format!(
            "input gate from column {first} of {width}, residual {added} [{m}, {k}] x [{k}, {n}]"
        );
        let out = try_linear_kernel_with(&on_gpu(&x), &on_gpu(&w), Some(&bias), &epilogue);
        if !offered(out.is_some(), &what) {
            return;
        }
        let out = host_f32(out.unwrap());
        // The gated input as the kernel stages it: in f32 from the f16 inputs, rounded to f16.
        let (x16, g16) = (
            through_f16(&x).try_to_vec::<f32>().unwrap(),
            through_f16(&gates).try_to_vec::<f32>().unwrap(),
        );
        let gated: Vec<f32> = (0..m * k)
            .map(|i| x16[i] * sigmoid(g16[(i / k) * width + first + i % k]))
            .collect();
        let gated = TensorData::new(gated, [m, k]);
        let residual = through_f16(&residual).try_to_vec::<f32>().unwrap();
        let expected: Vec<f32> = reference(&gated, &w, Some(&b))
            .iter()
            .enumerate()
            .map(|(i, &y)| if added { y + residual[i] } else { y })
            .collect();
        // The gated input and the product rounded to f16, the result once more with a residual.
        let error = relative_error(&out, &expected);
        println!("{what}: relative error {error:.2e}");
        assert!(error <= 2e-3, "{what}: relative error {error:.3e}");
    }
}

#[test]
fn gated_edges_match_reference_f16() {
    let Some(device) = gpu() else { return };
    // The Evoformer's edges (128 -> 4 x 128) and the template stack's (64 -> 4 x 64), rows
    // ending inside a 64-row tile, about a third of the pairs masked; then enough rows for two
    // plane groups (from 65,536) with cubes that walk several tiles.
    for (seed, &(m, k, n)) in [(1000, 128, 512), (4104, 64, 256), (140_008, 128, 128)]
        .iter()
        .enumerate()
    {
        let seed = 400 + seed as u64 * 10;
        let x = TensorData::new(values(m * k, seed, 2.0), [m, k]);
        let w = TensorData::new(values(k * n, seed + 1, (k as f32).powf(-0.5)), [k, n]);
        let b = TensorData::new(values(n, seed + 2, 1.0), [n]);
        let mask: Vec<f32> = values(m, seed + 3, 1.0)
            .into_iter()
            .map(|v| if v < -0.3 { 0.0 } else { 1.0 })
            .collect();
        let mask = TensorData::new(mask, [m]);
        let out = try_gated_edges_kernel(
            &tensor_in::<2>(&x, &device, DType::F16),
            &tensor_in::<2>(&w, &device, DType::F16),
            &tensor_in::<1>(&b, &device, DType::F16),
            &tensor_in::<1>(&mask, &device, DType::F16),
        );
        if !offered(out.is_some(), "gated edges") {
            return;
        }
        let out = out.unwrap();
        assert_eq!(out.dims(), [n / 2, m]);
        let out: Vec<f32> = out.cast(DType::F32).into_data().try_to_vec().unwrap();
        let y = reference(&x, &w, Some(&b));
        let mask = mask.try_to_vec::<f32>().unwrap();
        let half = EDGE_BLOCK / 2;
        // Output row `block * half + c` is column `block * EDGE_BLOCK + c` gated by column
        // `block * EDGE_BLOCK + half + c`.
        let expected: Vec<f32> = (0..n / 2 * m)
            .map(|i| {
                let (channel, row) = (i / m, i % m);
                let column = channel / half * EDGE_BLOCK + channel % half;
                mask[row] * y[row * n + column] * sigmoid(y[row * n + column + half])
            })
            .collect();
        let error = relative_error(&out, &expected);
        println!("gated edges [{m}, {k}] x [{k}, {n}]: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "[{m}, {k}] x [{k}, {n}] gated: relative error {error:.3e}"
        );
        let masked_rows = (0..m).filter(|&r| mask[r] == 0.0);
        for r in masked_rows {
            assert!(
                (0..n / 2).all(|c| out[c * m + r] == 0.0),
                "masked row {r} not zero"
            );
        }
    }
}

#[test]
fn scaled_columns_match_reference_f16() {
    let Some(device) = gpu() else { return };
    // (rows, in, out, scaled): one column block; the MSA row attention's shared projection
    // (256 inputs in chunks, 1024 outputs in 8 blocks, the first two blocks scaled); one block
    // over enough rows that two plane groups split each tile's stripes.
    for (m, k, n, columns) in [
        (1000, 128, 128, 64),
        (300, 256, 1024, 256),
        (140_001, 128, 128, 64),
    ] {
        let data = |len: usize, seed: u64, scale: f32, shape: Vec<usize>| {
            TensorData::new(values(len, seed, scale), shape)
        };
        let on_gpu = |d: &TensorData| tensor_in::<2>(d, &device, DType::F16);
        let x = data(m * k, 700, 2.0, vec![m, k]);
        let w = data(k * n, 701, (k as f32).powf(-0.5), vec![k, n]);
        let b = data(n, 702, 1.0, vec![n]);
        let bias = tensor_in::<1>(&b, &device, DType::F16);
        let epilogue = Epilogue {
            scale_columns: Some((columns, 0.125)),
            ..Epilogue::default()
        };
        let what = format!("[{m}, {k}] x [{k}, {n}], {columns} columns scaled");
        let out = try_linear_kernel_with(&on_gpu(&x), &on_gpu(&w), Some(&bias), &epilogue);
        if !offered(out.is_some(), &what) {
            return;
        }
        let out = host_f32(out.unwrap());
        let expected: Vec<f32> = reference(&x, &w, Some(&b))
            .iter()
            .enumerate()
            .map(|(i, &y)| if i % n < columns { y * 0.125 } else { y })
            .collect();
        let error = relative_error(&out, &expected);
        println!("{what}: relative error {error:.2e}");
        assert!(error <= 2e-3, "{what}: relative error {error:.3e}");
    }
}

/// The f32 split-K kernel (few rows: the structure module and heads) against the CPU's f32
/// product, through `matmul_bias` as the model calls it.
#[test]
fn split_k_matches_reference_f32() {
    use af2_layers::split_k_linear::{MAX_ROWS, split_k_launches, split_k_supports};
    let Some(device) = gpu() else { return };
    // (rows, in, out, bias): the structure module's 384 -> 384, its 2112 -> 384 output
    // projection, the backbone update's 6 outputs, a 37-column head, one row, K below one
    // step, and rows at the limit over several row tiles.
    let cases = [
        (128, 384, 384, true),
        (128, 2112, 384, true),
        (256, 384, 6, true),
        (100, 384, 37, false),
        (1, 22, 128, true),
        (33, 7, 65, true),
        (4096, 128, 64, true),
    ];
    let tall = Tensor::<2>::zeros([MAX_ROWS + 1, 8], (&device, DType::F32));
    let narrow = Tensor::<2>::zeros([8, 8], (&device, DType::F32));
    assert!(
        !split_k_supports(&tall, &narrow),
        "more than MAX_ROWS rows offered"
    );
    for (seed, &(m, k, n, with_bias)) in cases.iter().enumerate() {
        let seed = 500 + seed as u64 * 10;
        let x = TensorData::new(values(m * k, seed, 2.0), [m, k]);
        let w = TensorData::new(values(k * n, seed + 1, (k as f32).powf(-0.5)), [k, n]);
        let b = with_bias.then(|| TensorData::new(values(n, seed + 2, 1.0), [n]));
        let xg = tensor_in::<2>(&x, &device, DType::F32);
        let wg = tensor_in::<2>(&w, &device, DType::F32);
        assert!(
            split_k_supports(&xg, &wg),
            "[{m}, {k}] x [{k}, {n}]: not offered"
        );
        // Refused: an f16 operand.
        let half = |t: &Tensor<2>| t.clone().cast(DType::F16);
        assert!(!split_k_supports(&half(&xg), &wg) && !split_k_supports(&xg, &half(&wg)));
        let bg = b.as_ref().map(|b| tensor_in::<1>(b, &device, DType::F32));
        let before = split_k_launches();
        let out = host_f32(matmul_bias(xg, wg, bg));
        assert!(
            split_k_launches() > before,
            "the split-K kernel did not run"
        );
        // f32 on both sides from the same inputs; only the order of the additions differs
        // (K up to 2112 terms of relative 2^-24 each).
        let expected = reference_f32(&x, &w, b.as_ref());
        let error = relative_error(&out, &expected);
        println!("split-K [{m}, {k}] x [{k}, {n}] bias {with_bias}: relative error {error:.2e}");
        assert!(
            error <= 1e-5,
            "split-K [{m}, {k}] x [{k}, {n}]: {error:.3e}"
        );
    }
}

/// `x · w (+ b)` in f32 on the CPU.
fn reference_f32(x: &TensorData, w: &TensorData, b: Option<&TensorData>) -> Vec<f32> {
    let device = cpu();
    let mut out =
        tensor_in::<2>(x, &device, DType::F32).matmul(tensor_in::<2>(w, &device, DType::F32));
    if let Some(b) = b {
        out = out + tensor_in::<1>(b, &device, DType::F32).unsqueeze::<2>();
    }
    out.into_data().try_to_vec::<f32>().unwrap()
}

/// Batched f32 products on the split-K kernel (the invariant point attention's shapes, one of
/// them from a transposed view) against the CPU's matmul.
#[test]
fn split_k_batched_matches_reference_f32() {
    use af2_layers::linear::batched_matmul;
    use af2_layers::split_k_linear::split_k_launches;
    let Some(device) = gpu() else { return };
    // (batch dims, M, K, N, transposed a): attention weights times scalar values, times
    // point values, queries times keys, and the pair values from the weights' [B, i, H, j]
    // view.
    let cases: [([usize; 2], usize, usize, usize, bool); 4] = [
        ([2, 12], 128, 128, 16, false),
        ([1, 12], 100, 100, 24, false),
        ([1, 12], 128, 16, 128, false),
        ([1, 64], 12, 64, 128, true),
    ];
    for (seed, &(lead, m, k, n, transposed)) in cases.iter().enumerate() {
        let seed = 900 + seed as u64 * 10;
        let [b0, b1] = lead;
        // With `transposed`, a is stored [b0, M, b1, K] and read as its [b0, b1, M, K] view.
        let a_shape = if transposed {
            [b0, m, b1, k]
        } else {
            [b0, b1, m, k]
        };
        let a = TensorData::new(values(b0 * b1 * m * k, seed, 1.0), a_shape);
        let b = TensorData::new(values(b0 * b1 * k * n, seed + 1, 1.0), [b0, b1, k, n]);
        let view = |t: Tensor<4>| if transposed { t.swap_dims(1, 2) } else { t };
        let before = split_k_launches();
        let out = batched_matmul(
            view(tensor_in::<4>(&a, &device, DType::F32)),
            tensor_in::<4>(&b, &device, DType::F32),
        );
        let out: Vec<f32> = out.into_data().try_to_vec().unwrap();
        assert!(
            split_k_launches() > before,
            "the split-K kernel did not run"
        );
        let cpu_device = cpu();
        let expected = view(tensor_in::<4>(&a, &cpu_device, DType::F32)).matmul(tensor_in::<4>(
            &b,
            &cpu_device,
            DType::F32,
        ));
        let expected: Vec<f32> = expected.into_data().try_to_vec().unwrap();
        // f32 on both sides; only the order of the additions differs.
        let error = relative_error(&out, &expected);
        println!("split-K batched {lead:?} [{m}, {k}] x [{k}, {n}]: relative error {error:.2e}");
        assert!(error <= 1e-5, "split-K batched {lead:?}: {error:.3e}");
    }
}

#[test]
fn divisor_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (M, K): the outer product mean's last product for one design (`[N, S*32] x [S*32,
    // N*128]`) at L=64 and L=256 for two MSA rows, and at L=256 for one (the extra MSA of a
    // single sequence): the count of each pair divides a 128-column block, the bias repeats
    // every 128 columns, and the pair is added.
    let width = 128;
    for (seed, (m, k)) in [(64, 64), (256, 64), (256, 32)].into_iter().enumerate() {
        let n = m * width;
        let seed = 900 + seed as u64 * 10;
        let data = |len: usize, s: u64, scale: f32, shape: Vec<usize>| {
            TensorData::new(values(len, seed + s, scale), shape)
        };
        let x = data(m * k, 0, 2.0, vec![m, k]);
        let w = data(k * n, 1, (k as f32).powf(-0.5), vec![k, n]);
        let b = data(width, 2, 1.0, vec![width]);
        let blocks = n / width;
        let counts: Vec<f32> = values(m * blocks, seed + 4, 1.0)
            .into_iter()
            .map(|v| (v.abs() * 8.0).floor() + 1e-3)
            .collect();
        let residual = data(m * n, 5, 8.0, vec![m, n]);
        let on_gpu = |d: &TensorData| tensor_in::<2>(d, &device, DType::F16);
        let epilogue = Epilogue {
            divisor: Some((on_gpu(&TensorData::new(counts.clone(), [m, blocks])), width)),
            residual: Some(on_gpu(&residual)),
            ..Epilogue::default()
        };
        let bias = tensor_in::<1>(&b, &device, DType::F16);
        let what = format!("divisor a {width}-column block, [{m}, {k}] x [{k}, {n}]");
        let out = try_linear_kernel_with(&on_gpu(&x), &on_gpu(&w), Some(&bias), &epilogue);
        if !offered(out.is_some(), &what) {
            return;
        }
        let out = host_f32(out.unwrap());
        let b = b.try_to_vec::<f32>().unwrap();
        let repeated = TensorData::new((0..n).map(|c| b[c % width]).collect::<Vec<f32>>(), [n]);
        let counts = through_f16(&TensorData::new(counts, [m * blocks]))
            .try_to_vec::<f32>()
            .unwrap();
        let residual = through_f16(&residual).try_to_vec::<f32>().unwrap();
        let expected: Vec<f32> = reference(&x, &w, Some(&repeated))
            .iter()
            .enumerate()
            .map(|(i, &y)| y / counts[(i / n) * blocks + (i % n) / width] + residual[i])
            .collect();
        // The product rounded to f16 before the division, the result once more.
        let error = relative_error(&out, &expected);
        println!("{what}: relative error {error:.2e}");
        assert!(error <= 2e-3, "{what}: relative error {error:.3e}");
    }
}
