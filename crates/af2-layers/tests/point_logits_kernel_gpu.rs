//! The invariant point attention's point-term kernel against the same sum in f64 on the host,
//! on a GPU (`AF2_GPU_TESTS=1`; without it the test says it was skipped and passes).
#![cfg(feature = "cube")]

mod common;

use af2_layers::point_logits_kernel::try_point_logits;
use burn::tensor::{DType, Tensor, TensorData};
use common::{gpu, relative_error, tensor_in, values};

/// `-0.5 · w[g] · Σ_p |q[g, i, p] − k[g, j, p]|²` in f64, `[G, Q, K]` flattened.
fn reference(q: &[f32], k: &[f32], w: &[f32], [g, q_len, k_len, points]: [usize; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(g * q_len * k_len);
    for (gi, weight) in w.iter().enumerate().take(g) {
        for i in 0..q_len {
            for j in 0..k_len {
                let mut sum = 0f64;
                for p in 0..points {
                    let qp = ((gi * q_len + i) * points + p) * 3;
                    let kp = ((gi * k_len + j) * points + p) * 3;
                    let dist2: f64 = (0..3)
                        .map(|c| (q[qp + c] as f64 - k[kp + c] as f64).powi(2))
                        .sum();
                    sum += *weight as f64 * dist2;
                }
                out.push((-0.5 * sum) as f32);
            }
        }
    }
    out
}

#[test]
fn point_logits_kernel_matches_the_sum_in_f64() {
    let Some(device) = gpu() else { return };
    // Groups (designs × heads), queries, keys, points: the structure module's 12 heads of 4
    // points at a length that is not a multiple of the cube's 256 units, two designs, queries
    // and keys of different lengths, one point.
    for (case, [g, q_len, k_len, points]) in [[12, 37, 37, 4], [24, 19, 19, 4], [3, 5, 9, 1]]
        .into_iter()
        .enumerate()
    {
        let seed = 10 * case as u64;
        // Points up to 30 nm from the origin (the structure module's units) a few nm apart:
        // differences, not expanded squares, keep their precision.
        let offset = values(g * 3, seed + 1, 30.0);
        let point = |n: usize, s: u64| -> Vec<f32> {
            values(g * n * points * 3, s, 2.0)
                .into_iter()
                .enumerate()
                .map(|(e, v)| v + offset[(e / (n * points * 3)) * 3 + e % 3])
                .collect()
        };
        let q = point(q_len, seed + 2);
        let k = point(k_len, seed + 3);
        let w: Vec<f32> = values(g, seed + 4, 0.5).iter().map(|v| v + 0.6).collect();
        let q_t = tensor_in::<4>(
            &TensorData::new(q.clone(), [g, q_len, points, 3]),
            &device,
            DType::F32,
        );
        let k_t = tensor_in::<4>(
            &TensorData::new(k.clone(), [g, k_len, points, 3]),
            &device,
            DType::F32,
        );
        let w_t = tensor_in::<1>(&TensorData::new(w.clone(), [g]), &device, DType::F32);
        let out = try_point_logits(&q_t, &k_t, &w_t).expect("a GPU device takes the kernel");
        assert_eq!(out.dims(), [g, q_len, k_len]);
        let got: Vec<f32> = out
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = reference(&q, &k, &w, [g, q_len, k_len, points]);
        let error = relative_error(&got, &expected);
        println!("point logits [{g}, {q_len}, {k_len}, {points}]: relative error {error:.3e}");
        // f32 differences and a sum of at most 12 squares: a few f32 roundings of the peak.
        assert!(error < 1e-5, "case {case}: relative error {error}");

        // The same keys as a strided view (points and coordinates swapped back and forth).
        let strided = Tensor::<4>::from_data(
            TensorData::new(k.clone(), [g, k_len, points, 3]),
            (&device, DType::F32),
        )
        .swap_dims(2, 3)
        .reshape([g, k_len, 3, points])
        .swap_dims(2, 3);
        let again = try_point_logits(&q_t, &strided, &w_t).unwrap();
        let again: Vec<f32> = again
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            relative_error(&again, &expected) < 1e-5,
            "case {case}, strided keys"
        );
    }
}
