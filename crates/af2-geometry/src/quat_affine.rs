//! Backbone frames as quaternion plus translation (AlphaFold's `quat_affine.QuatAffine`).

use burn::tensor::{Device, Tensor, TensorData};

use crate::Rigid;
use crate::constant::constant;
use crate::rigid::rotate;

/// Coefficients of the rotation entries in the quaternion products: `R[k] = Σ C[i][j][k] q_i q_j`
/// over `(w, x, y, z)`, entries row-major (AlphaFold's `QUAT_TO_ROT`). Listed sparsely as
/// `(i, j, k, coefficient)`; each off-diagonal product appears as `q_i q_j` and `q_j q_i`.
#[rustfmt::skip]
const QUAT_TO_ROT: [(usize, usize, usize, f32); 36] = {
    const W: usize = 0;
    const X: usize = 1;
    const Y: usize = 2;
    const Z: usize = 3;
    [
        // R00 = ww + xx - yy - zz
        (W, W, 0, 1.0), (X, X, 0, 1.0), (Y, Y, 0, -1.0), (Z, Z, 0, -1.0),
        // R01 = 2 (xy - wz)
        (X, Y, 1, 1.0), (Y, X, 1, 1.0), (W, Z, 1, -1.0), (Z, W, 1, -1.0),
        // R02 = 2 (xz + wy)
        (X, Z, 2, 1.0), (Z, X, 2, 1.0), (W, Y, 2, 1.0), (Y, W, 2, 1.0),
        // R10 = 2 (xy + wz)
        (X, Y, 3, 1.0), (Y, X, 3, 1.0), (W, Z, 3, 1.0), (Z, W, 3, 1.0),
        // R11 = ww - xx + yy - zz
        (W, W, 4, 1.0), (X, X, 4, -1.0), (Y, Y, 4, 1.0), (Z, Z, 4, -1.0),
        // R12 = 2 (yz - wx)
        (Y, Z, 5, 1.0), (Z, Y, 5, 1.0), (W, X, 5, -1.0), (X, W, 5, -1.0),
        // R20 = 2 (xz - wy)
        (X, Z, 6, 1.0), (Z, X, 6, 1.0), (W, Y, 6, -1.0), (Y, W, 6, -1.0),
        // R21 = 2 (yz + wx)
        (Y, Z, 7, 1.0), (Z, Y, 7, 1.0), (W, X, 7, 1.0), (X, W, 7, 1.0),
        // R22 = ww - xx - yy + zz
        (W, W, 8, 1.0), (X, X, 8, -1.0), (Y, Y, 8, -1.0), (Z, Z, 8, 1.0),
    ]
};

/// Coefficients of `q ⊗ (0, v)`: `out[k] = Σ C[i][j][k] q_i v_j` over `q = (w, x, y, z)` and
/// `v = (b, c, d)` (AlphaFold's `QUAT_MULTIPLY_BY_VEC`), as `(i, j, k, coefficient)`.
#[rustfmt::skip]
const QUAT_MULTIPLY_BY_VEC: [(usize, usize, usize, f32); 12] = [
    // w' = -x b - y c - z d
    (1, 0, 0, -1.0), (2, 1, 0, -1.0), (3, 2, 0, -1.0),
    // x' = w b + y d - z c
    (0, 0, 1, 1.0), (2, 2, 1, 1.0), (3, 1, 1, -1.0),
    // y' = w c - x d + z b
    (0, 1, 2, 1.0), (1, 2, 2, -1.0), (3, 0, 2, 1.0),
    // z' = w d + x c - y b
    (0, 2, 3, 1.0), (1, 1, 3, 1.0), (2, 0, 3, -1.0),
];

/// A dense `[rows * cols, outputs]` matrix from sparse `(i, j, k, coefficient)` entries, to
/// multiply the flattened products `a_i b_j` (`i` over `rows`, `j` over `cols`); uploaded once
/// per device as the constant `name`.
fn bilinear_coefficients(
    name: &'static str,
    entries: &[(usize, usize, usize, f32)],
    [rows, cols, outputs]: [usize; 3],
    device: &Device,
) -> Tensor<2> {
    constant(name, [rows * cols, outputs], device, || {
        let mut dense = vec![0.0f32; rows * cols * outputs];
        for &(i, j, k, c) in entries {
            dense[(i * cols + j) * outputs + k] += c;
        }
        TensorData::new(dense, [rows * cols, outputs])
    })
}

/// `Σ C[i][j][k] a_i b_j` for every row: one outer product and one small matmul, where the
/// component-by-component form would record a few dozen tiny operations.
///
/// # Shapes
/// - a: `[B, I]`, b: `[B, J]`, coefficients: `[I * J, K]`
/// - output: `[B, K]`
fn bilinear(a: Tensor<2>, b: Tensor<2>, coefficients: Tensor<2>) -> Tensor<2> {
    let [n, i] = a.dims();
    let j = b.dims()[1];
    (a.unsqueeze_dim::<3>(2) * b.unsqueeze_dim::<3>(1))
        .reshape([n, i * j])
        .matmul(coefficients)
}

/// Rotation matrices of quaternions `(w, x, y, z)`, AlphaFold's `quat_to_rot`.
///
/// Like AlphaFold this does not normalise: a unit quaternion gives a rotation, any other one a
/// rotation scaled by `|q|²` (plus a non-orthogonal part). Normalise first where AlphaFold does
/// (see [`QuatAffine::new`]).
///
/// # Shapes
/// - q: `[B, 4]`
/// - output: `[B, 3, 3]`
pub fn quat_to_rot(q: Tensor<2>) -> Tensor<3> {
    let b = q.dims()[0];
    let coefficients = bilinear_coefficients("QUAT_TO_ROT", &QUAT_TO_ROT, [4, 4, 9], &q.device());
    bilinear(q.clone(), q, coefficients).reshape([b, 3, 3])
}

/// Hamilton product `q ⊗ (0, v)` of a quaternion with a pure-vector quaternion, AlphaFold's
/// `quat_multiply_by_vec`.
///
/// # Shapes
/// - q: `[B, 4]` as `(w, x, y, z)`
/// - v: `[B, 3]`
/// - output: `[B, 4]`
pub fn quat_multiply_by_vec(q: Tensor<2>, v: Tensor<2>) -> Tensor<2> {
    let coefficients = bilinear_coefficients(
        "QUAT_MULTIPLY_BY_VEC",
        &QUAT_MULTIPLY_BY_VEC,
        [4, 3, 4],
        &q.device(),
    );
    bilinear(q, v, coefficients)
}

/// A batch of affine frames stored as a quaternion and, kept in sync, its rotation matrix, plus
/// a translation (AlphaFold's `QuatAffine`): `x_global = rotation · x_local + translation`.
#[derive(Debug, Clone)]
pub struct QuatAffine {
    /// `(w, x, y, z)`. Shape `[B, 4]`.
    pub quaternion: Tensor<2>,
    /// Shape `[B, 3]`.
    pub translation: Tensor<2>,
    /// Shape `[B, 3, 3]`.
    pub rotation: Tensor<3>,
}

impl QuatAffine {
    /// Frames from a (not necessarily unit) quaternion, which is L2-normalised first, and a
    /// translation: AlphaFold's constructor with `normalize=True`.
    ///
    /// # Shapes
    /// - quaternion: `[B, 4]`
    /// - translation: `[B, 3]`
    pub fn new(quaternion: Tensor<2>, translation: Tensor<2>) -> Self {
        let norm = quaternion.clone().square().sum_dim(1).sqrt();
        Self::from_unit_quaternion(quaternion / norm, translation)
    }

    /// Frames from a quaternion used as given (AlphaFold's `normalize=False`).
    pub fn from_unit_quaternion(quaternion: Tensor<2>, translation: Tensor<2>) -> Self {
        let rotation = quat_to_rot(quaternion.clone());
        Self {
            quaternion,
            translation,
            rotation,
        }
    }

    /// `b` identity frames (AlphaFold's `generate_new_affine`).
    pub fn identity(b: usize, device: &Device) -> Self {
        let quaternion = constant("identity quaternion", [1, 4], device, || {
            TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0], [1, 4])
        })
        .repeat_dim(0, b);
        Self::from_unit_quaternion(quaternion, Tensor::zeros([b, 3], device))
    }

    /// Number of frames `B`.
    pub fn batch_size(&self) -> usize {
        self.translation.dims()[0]
    }

    /// Unpacks `[quaternion, translation]`. As AlphaFold's `from_tensor` (default
    /// `normalize=False`) the quaternion is used as stored.
    ///
    /// # Shapes
    /// - tensor: `[B, 7]`
    pub fn from_tensor(tensor: Tensor<2>) -> Self {
        let quaternion = tensor.clone().narrow(1, 0, 4);
        let translation = tensor.narrow(1, 4, 3);
        Self::from_unit_quaternion(quaternion, translation)
    }

    /// Packs `[quaternion, translation]`.
    ///
    /// # Shapes
    /// - output: `[B, 7]`
    pub fn to_tensor(&self) -> Tensor<2> {
        Tensor::cat(vec![self.quaternion.clone(), self.translation.clone()], 1)
    }

    /// Applies `update` before `self` (Jumper et al. 2021, Suppl. Alg. 23 lines 2–4, AlphaFold's
    /// `pre_compose`): the quaternion becomes `q + q ⊗ (0, b, c, d)` (then normalised) and the
    /// translation `t + R · (tx, ty, tz)`, where `update = (b, c, d, tx, ty, tz)`. A zero update
    /// gives back the same frames.
    ///
    /// # Shapes
    /// - update: `[B, 6]`
    pub fn pre_compose(&self, update: Tensor<2>) -> Self {
        let vector_quaternion_update = update.clone().narrow(1, 0, 3);
        let trans_update = update.narrow(1, 3, 3);
        let quaternion = self.quaternion.clone()
            + quat_multiply_by_vec(self.quaternion.clone(), vector_quaternion_update);
        let translation = self.translation.clone() + rotate(self.rotation.clone(), trans_update);
        Self::new(quaternion, translation)
    }

    /// The same frames with the translation multiplied by `factor` (AlphaFold's
    /// `scale_translation`; the structure module works in nanometres and reports ångströms).
    pub fn scale_translation(&self, factor: f32) -> Self {
        Self {
            quaternion: self.quaternion.clone(),
            translation: self.translation.clone().mul_scalar(factor),
            rotation: self.rotation.clone(),
        }
    }

    /// Maps `P` local points of every frame to the global frame (AlphaFold's `apply_to_point`
    /// with `extra_dims=1`).
    ///
    /// # Shapes
    /// - pts: `[B, P, 3]`
    /// - output: `[B, P, 3]`
    pub fn apply_to_point(&self, pts: Tensor<3>) -> Tensor<3> {
        pts.matmul(self.rotation.clone().swap_dims(1, 2))
            + self.translation.clone().unsqueeze_dim::<3>(1)
    }

    /// Maps `P` global points into every local frame (AlphaFold's `invert_point` with
    /// `extra_dims=1`): `Rᵀ (x - t)`.
    ///
    /// # Shapes
    /// - pts: `[B, P, 3]`
    /// - output: `[B, P, 3]`
    pub fn invert_point(&self, pts: Tensor<3>) -> Tensor<3> {
        (pts - self.translation.clone().unsqueeze_dim::<3>(1)).matmul(self.rotation.clone())
    }

    /// The same frames as a [`Rigid`] (AlphaFold's `rigids_from_quataffine`).
    pub fn to_rigid(&self) -> Rigid {
        Rigid::new(self.rotation.clone(), self.translation.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rigid::tests::assert_rotation;
    use crate::test_util::*;
    use proptest::prelude::*;

    /// f32 rounding of unit-magnitude products: a few ulp (~1e-7) per entry.
    const ROT_TOL: f32 = 1e-5;
    /// Points of magnitude up to ~100 carry ~1e-5 absolute rounding per operation.
    const POINT_TOL: f32 = 1e-4;

    fn quats(b: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-1.0f32..1.0, 4 * b).prop_filter("non-degenerate", move |q| {
            q.chunks(4)
                .all(|c| c.iter().map(|x| x * x).sum::<f32>() > 0.05)
        })
    }

    fn coords(n: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-50.0f32..50.0, n)
    }

    #[test]
    fn rotation_about_z_by_90_degrees() {
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let r = quat_to_rot(t2(vec![h, 0.0, 0.0, h], [1, 4]));
        let expected = [0., -1., 0., 1., 0., 0., 0., 0., 1.];
        for (a, b) in vec(r).iter().zip(expected) {
            approx::assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
        }
    }

    #[test]
    fn quaternion_product_matches_hand_computation() {
        // i ⊗ j = k; (1 + i) ⊗ (0, 0, 0, 1) = k + i k = k - j.
        let q = t2(vec![0., 1., 0., 0., 1., 1., 0., 0.], [2, 4]);
        let v = t2(vec![0., 1., 0., 0., 0., 1.], [2, 3]);
        assert_eq!(
            vec(quat_multiply_by_vec(q, v)),
            vec![0., 0., 0., 1., 0., 0., -1., 1.]
        );
    }

    #[test]
    fn tensor_round_trip() {
        let t = t2(vec![1., 0., 0., 0., 1., 2., 3.], [1, 7]);
        let a = QuatAffine::from_tensor(t.clone());
        assert_eq!(vec(a.to_tensor()), vec(t));
        assert_eq!(
            vec(a.scale_translation(10.0).translation),
            vec![10., 20., 30.]
        );
    }

    /// AlphaFold's formulas written out, in f64 on the host: the rotation of `(w, x, y, z)`
    /// (row-major) and `q ⊗ (0, v)`.
    fn rotation_by_hand([w, x, y, z]: [f64; 4]) -> [f64; 9] {
        [
            w * w + x * x - y * y - z * z,
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
            2.0 * (x * y + w * z),
            w * w - x * x + y * y - z * z,
            2.0 * (y * z - w * x),
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            w * w - x * x - y * y + z * z,
        ]
    }

    fn product_by_hand([w, x, y, z]: [f64; 4], [b, c, d]: [f64; 3]) -> [f64; 4] {
        [
            -x * b - y * c - z * d,
            w * b + y * d - z * c,
            w * c - x * d + z * b,
            w * d + x * c - y * b,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn coefficient_tables_match_the_formulas(q in quats(4), v in coords(12)) {
            let rot = vec(quat_to_rot(t2(q.clone(), [4, 4])));
            let product = vec(quat_multiply_by_vec(t2(q.clone(), [4, 4]), t2(v.clone(), [4, 3])));
            for r in 0..4 {
                let qr: [f64; 4] = std::array::from_fn(|i| q[4 * r + i] as f64);
                let vr: [f64; 3] = std::array::from_fn(|i| v[3 * r + i] as f64);
                for (got, want) in rot[9 * r..9 * r + 9].iter().zip(rotation_by_hand(qr)) {
                    prop_assert!((*got as f64 - want).abs() < ROT_TOL as f64, "{got} vs {want}");
                }
                // Products of unit-scale quaternion components with coordinates up to 50.
                for (got, want) in product[4 * r..4 * r + 4].iter().zip(product_by_hand(qr, vr)) {
                    prop_assert!((*got as f64 - want).abs() < POINT_TOL as f64, "{got} vs {want}");
                }
            }
        }

        #[test]
        fn normalised_quaternion_gives_rotation(q in quats(5)) {
            let a = QuatAffine::new(t2(q, [5, 4]), Tensor::zeros([5, 3], &device()));
            assert_rotation(a.rotation)?;
        }

        #[test]
        fn zero_update_is_identity(q in quats(3), t in coords(9)) {
            let a = QuatAffine::new(t2(q, [3, 4]), t2(t, [3, 3]));
            let b = a.pre_compose(Tensor::zeros([3, 6], &device()));
            prop_assert!(max_abs_diff(b.quaternion, a.quaternion.clone()) < ROT_TOL);
            prop_assert!(max_abs_diff(b.rotation, a.rotation.clone()) < ROT_TOL);
            prop_assert!(max_abs_diff(b.translation, a.translation.clone()) < POINT_TOL);
        }

        #[test]
        fn pre_compose_applies_update_first(
            q in quats(2), t in coords(6), u in prop::collection::vec(-1.0f32..1.0, 12),
            p in coords(2 * 3 * 3)
        ) {
            let a = QuatAffine::new(t2(q, [2, 4]), t2(t, [2, 3]));
            let update = t2(u.clone(), [2, 6]);
            let composed = a.pre_compose(update);
            // The update as its own frame: quaternion (1, b, c, d), translation (tx, ty, tz).
            let uq: Vec<f32> = u.chunks(6).flat_map(|c| [1.0, c[0], c[1], c[2]]).collect();
            let ut: Vec<f32> = u.chunks(6).flat_map(|c| [c[3], c[4], c[5]]).collect();
            let upd = QuatAffine::new(t2(uq, [2, 4]), t2(ut, [2, 3]));
            let pts = t3(p, [2, 3, 3]);
            let expected = a.apply_to_point(upd.apply_to_point(pts.clone()));
            prop_assert!(max_abs_diff(composed.apply_to_point(pts), expected) < POINT_TOL);
            assert_rotation(composed.rotation)?;
        }

        #[test]
        fn invert_point_undoes_apply(q in quats(3), t in coords(9), p in coords(3 * 4 * 3)) {
            let a = QuatAffine::new(t2(q, [3, 4]), t2(t, [3, 3]));
            let pts = t3(p, [3, 4, 3]);
            let back = a.invert_point(a.apply_to_point(pts.clone()));
            prop_assert!(max_abs_diff(back, pts) < POINT_TOL);
        }

        #[test]
        fn rigid_agrees_with_affine(q in quats(2), t in coords(6), p in coords(2 * 2 * 3)) {
            let a = QuatAffine::new(t2(q, [2, 4]), t2(t, [2, 3]));
            let pts = t3(p, [2, 2, 3]);
            let r = a.to_rigid();
            prop_assert_eq!(vec(r.apply(pts.clone())), vec(a.apply_to_point(pts.clone())));
            prop_assert_eq!(vec(r.invert_apply(pts.clone())), vec(a.invert_point(pts)));
        }

        #[test]
        fn identity_leaves_points(p in coords(2 * 3 * 3)) {
            let pts = t3(p, [2, 3, 3]);
            let a = QuatAffine::identity(2, &device());
            prop_assert_eq!(vec(a.apply_to_point(pts.clone())), vec(pts));
        }
    }
}
