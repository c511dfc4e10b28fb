//! The invariant point attention's point term as one kernel (feature `cube`):
//! `-0.5 · w_g · Σ_p |q_gip − k_gjp|²` for every group `g` (a design's head), query `i` and key
//! `j`, each logit summed by one unit from the differences of its points' coordinates, in the
//! inputs' dtype (f32 in the structure module), in AlphaFold's order: each point's squared
//! distance over x, y, z, weighted, summed over the points, then halved and negated.
//!
//! As Burn operations the term broadcasts `[G, Q, K, P, 3]` differences (38 MB at L=256 with 12
//! heads and 4 points) and reduces them in three more passes; on an H100 those took about 210 µs
//! a structure-module iteration (CubeCL profiler, docs/PERFORMANCE.md), 32 iterations a
//! prediction of four passes.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::attention_kernel::{address_type, cube_count};

/// Units per cube, one logit each.
const UNITS: usize = 256;

/// The point term as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait PointLogitsOps: Backend {
    /// `-0.5 · weights[g] · Σ_p |q[g, i, p] − k[g, j, p]|²` `[G, Q, K]` for `q` `[G, Q, P, 3]`,
    /// `k` `[G, K, P, 3]` and `weights` `[G]`.
    #[fusion(dtype = q, shape = Shape::new([q[0], q[1], k[1]]))]
    fn point_logits(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl PointLogitsOps for CubeBackend {
    fn point_logits(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(q, k, weights)
    }
}

/// `-0.5 · weights[g] · Σ_p |q[g, i, p] − k[g, j, p]|²` on the kernel where the device is a
/// cubecl one, else `None` (the caller's Burn operations).
///
/// # Shapes
/// - q: `[G, Q, P, 3]`, k: `[G, K, P, 3]`, weights: `[G]`
/// - output: `[G, Q, K]`
///
/// # Panics
/// If the shapes disagree (groups, points, three coordinates) or the dtypes differ.
pub fn try_point_logits(q: &Tensor<4>, k: &Tensor<4>, weights: &Tensor<1>) -> Option<Tensor<3>> {
    crate::with_cube_properties(&q.device(), |_| ())?;
    let ([g, _, p, xyz], [g_k, _, p_k, xyz_k]) = (q.dims(), k.dims());
    assert!(
        g == g_k && p == p_k && xyz == 3 && xyz_k == 3 && weights.dims() == [g],
        "point_logits: q {:?}, k {:?} and weights {:?} do not agree",
        q.dims(),
        k.dims(),
        weights.dims()
    );
    assert!(
        q.dtype() == k.dtype() && q.dtype() == weights.dtype(),
        "point_logits: dtypes differ"
    );
    Some(Tensor::from_dispatch(Dispatch::point_logits(
        q.clone().into_dispatch(),
        k.clone().into_dispatch(),
        weights.clone().into_dispatch(),
    )))
}

fn launch(q: CubeTensor, k: CubeTensor, weights: CubeTensor) -> CubeTensor {
    let (q, k, weights) = (
        into_contiguous(untile(q)),
        into_contiguous(untile(k)),
        into_contiguous(untile(weights)),
    );
    let (groups, q_len, points) = (q.meta.shape()[0], q.meta.shape()[1], q.meta.shape()[2]);
    let k_len = k.meta.shape()[1];
    let client = q.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        q.device.clone(),
        Shape::new([groups, q_len, k_len]),
        q.dtype,
    );
    let logits = groups * q_len * k_len;
    let address = address_type([&q, &k, &weights, &out]);
    let dtype = dtype_to_storage_type(q.dtype);
    // SAFETY: every tensor is contiguous with the shapes checked by `try_point_logits`; units
    // past `logits` touch nothing.
    unsafe {
        kernel::point_logits_kernel::launch_unchecked(
            &client,
            cube_count(logits.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            address,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            logits,
            points,
            dtype,
        );
    }
    out
}

mod kernel {
    use super::UNITS;
    use cubecl::prelude::*;

    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn point_logits_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        weights: &Tensor<F>,
        out: &mut Tensor<F>,
        logits: usize,
        points: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let at = CUBE_POS * UNITS + UNIT_POS as usize;
        if at < logits {
            let (q_len, k_len) = (out.shape(1), out.shape(2));
            let j = at % k_len;
            let i = (at / k_len) % q_len;
            let g = at / (k_len * q_len);
            let q0 = (g * q_len + i) * points * 3;
            let k0 = (g * k_len + j) * points * 3;
            let w = weights[g];
            let mut sum = F::new(0.0);
            for p in 0..points {
                let (qp, kp) = (q0 + p * 3, k0 + p * 3);
                let dx = q[qp] - k[kp];
                let dy = q[qp + 1] - k[kp + 1];
                let dz = q[qp + 2] - k[kp + 2];
                sum += w * (dx * dx + dy * dy + dz * dz);
            }
            out[at] = sum * F::new(-0.5);
        }
    }
}
