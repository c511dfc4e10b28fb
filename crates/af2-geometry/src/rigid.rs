//! Rigid transformations as rotation matrix plus translation (AlphaFold's `r3.Rigids`).

use burn::tensor::{Device, Int, Tensor};

/// Regulariser added to squared norms before the square root in [`Rigid::from_3_points`],
/// AlphaFold's `vecs_robust_norm` epsilon.
pub const ROBUST_NORM_EPSILON: f32 = 1e-8;

/// A batch of rigid transformations: `x_global = rot · x_local + trans`.
#[derive(Debug, Clone)]
pub struct Rigid {
    /// Rotation matrices, row-major: `rot[b, i, j]` is row `i`, column `j`. Shape `[B, 3, 3]`.
    pub rot: Tensor<3>,
    /// Translations. Shape `[B, 3]`.
    pub trans: Tensor<2>,
}

impl Rigid {
    /// Wraps a rotation `[B, 3, 3]` and a translation `[B, 3]`.
    pub fn new(rot: Tensor<3>, trans: Tensor<2>) -> Self {
        debug_assert_eq!(rot.dims()[0], trans.dims()[0]);
        Self { rot, trans }
    }

    /// `b` identity transformations.
    pub fn identity(b: usize, device: &Device) -> Self {
        let rot = Tensor::<2>::eye(3, device)
            .unsqueeze::<3>()
            .repeat_dim(0, b);
        Self {
            rot,
            trans: Tensor::zeros([b, 3], device),
        }
    }

    /// Number of transformations `B`.
    pub fn batch_size(&self) -> usize {
        self.trans.dims()[0]
    }

    /// The device the tensors live on.
    pub fn device(&self) -> Device {
        self.trans.device()
    }

    /// Group composition `self ∘ other`: applies `other` first, then `self`
    /// (AlphaFold's `rigids_mul_rigids(self, other)`).
    pub fn compose(&self, other: &Rigid) -> Rigid {
        let rot = self.rot.clone().matmul(other.rot.clone());
        let trans = self.trans.clone() + rotate(self.rot.clone(), other.trans.clone());
        Rigid { rot, trans }
    }

    /// The inverse transformation: `rotᵀ`, `-rotᵀ · trans`.
    pub fn invert(&self) -> Rigid {
        let rot = self.rot.clone().swap_dims(1, 2);
        let trans = rotate(rot.clone(), self.trans.clone()).neg();
        Rigid { rot, trans }
    }

    /// Maps `P` local points of every frame to the global frame.
    ///
    /// # Shapes
    /// - pts: `[B, P, 3]`
    /// - output: `[B, P, 3]`
    pub fn apply(&self, pts: Tensor<3>) -> Tensor<3> {
        pts.matmul(self.rot.clone().swap_dims(1, 2)) + self.trans.clone().unsqueeze_dim::<3>(1)
    }

    /// Maps `P` global points into every local frame (the inverse of [`Rigid::apply`]).
    ///
    /// # Shapes
    /// - pts: `[B, P, 3]`
    /// - output: `[B, P, 3]`
    pub fn invert_apply(&self, pts: Tensor<3>) -> Tensor<3> {
        (pts - self.trans.clone().unsqueeze_dim::<3>(1)).matmul(self.rot.clone())
    }

    /// Maps one local point per frame to the global frame.
    ///
    /// # Shapes
    /// - v: `[B, 3]`
    /// - output: `[B, 3]`
    pub fn apply_vec(&self, v: Tensor<2>) -> Tensor<2> {
        rotate(self.rot.clone(), v) + self.trans.clone()
    }

    /// Frames from three points by Gram–Schmidt (Jumper et al. 2021, Suppl. Alg. 21,
    /// AlphaFold's `r3.rigids_from_3_points`): the x axis points from `p_neg_x_axis` to
    /// `origin`, `p_xy_plane` lies in the xy plane with positive y, and z = x × y. Norms are
    /// computed as `sqrt(|v|² + 1e-8)` exactly as AlphaFold, so degenerate input gives a finite
    /// (non-orthonormal) frame rather than NaN.
    ///
    /// # Shapes
    /// - each point: `[B, 3]`
    pub fn from_3_points(
        p_neg_x_axis: Tensor<2>,
        origin: Tensor<2>,
        p_xy_plane: Tensor<2>,
    ) -> Rigid {
        let e0 = robust_normalize(origin.clone() - p_neg_x_axis);
        let e1_raw = p_xy_plane - origin.clone();
        let c = (e1_raw.clone() * e0.clone()).sum_dim(1);
        let e1 = robust_normalize(e1_raw - c * e0.clone());
        let e2 = cross(e0.clone(), e1.clone());
        // Columns of the rotation are the new axes.
        let rot = Tensor::stack::<3>(vec![e0, e1, e2], 2);
        Rigid { rot, trans: origin }
    }

    /// AlphaFold's flat12 encoding: `xx, xy, xz, yx, yy, yz, zx, zy, zz, tx, ty, tz`.
    ///
    /// # Shapes
    /// - output: `[B, 12]`
    pub fn to_flat12(&self) -> Tensor<2> {
        let b = self.batch_size();
        Tensor::cat(
            vec![self.rot.clone().reshape([b, 9]), self.trans.clone()],
            1,
        )
    }

    /// Inverse of [`Rigid::to_flat12`].
    ///
    /// # Shapes
    /// - flat: `[B, 12]`
    pub fn from_flat12(flat: Tensor<2>) -> Rigid {
        let b = flat.dims()[0];
        let rot = flat.clone().narrow(1, 0, 9).reshape([b, 3, 3]);
        let trans = flat.narrow(1, 9, 3);
        Rigid { rot, trans }
    }

    /// Concatenates batches of frames along `B`.
    pub fn cat(rigids: Vec<Rigid>) -> Rigid {
        let (rots, trans): (Vec<_>, Vec<_>) = rigids.into_iter().map(|r| (r.rot, r.trans)).unzip();
        Rigid {
            rot: Tensor::cat(rots, 0),
            trans: Tensor::cat(trans, 0),
        }
    }

    /// Gathers frames by index along `B`.
    ///
    /// # Shapes
    /// - indices: `[K]`
    /// - output: `[K]` frames
    pub fn select(&self, indices: Tensor<1, Int>) -> Rigid {
        Rigid {
            rot: self.rot.clone().select(0, indices.clone()),
            trans: self.trans.clone().select(0, indices),
        }
    }

    /// Repeats every frame `k` times consecutively: frame `b` becomes frames `b*k .. b*k+k`.
    pub fn repeat_interleave(&self, k: usize) -> Rigid {
        let b = self.batch_size();
        Rigid {
            rot: self
                .rot
                .clone()
                .unsqueeze_dim::<4>(1)
                .repeat_dim(1, k)
                .reshape([b * k, 3, 3]),
            trans: self
                .trans
                .clone()
                .unsqueeze_dim::<3>(1)
                .repeat_dim(1, k)
                .reshape([b * k, 3]),
        }
    }
}

/// `rot · v` for one vector per matrix. `[B, 3, 3] × [B, 3] -> [B, 3]`.
pub(crate) fn rotate(rot: Tensor<3>, v: Tensor<2>) -> Tensor<2> {
    rot.matmul(v.unsqueeze_dim::<3>(2)).squeeze_dim::<2>(2)
}

/// `v / sqrt(|v|² + 1e-8)` along the last axis. `[B, 3] -> [B, 3]`.
fn robust_normalize(v: Tensor<2>) -> Tensor<2> {
    let norm = (v.clone().square().sum_dim(1) + ROBUST_NORM_EPSILON).sqrt();
    v / norm
}

/// Cross product along the last axis. `[B, 3] × [B, 3] -> [B, 3]`.
fn cross(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let c = |t: &Tensor<2>, i| t.clone().narrow(1, i, 1);
    let (ax, ay, az) = (c(&a, 0), c(&a, 1), c(&a, 2));
    let (bx, by, bz) = (c(&b, 0), c(&b, 1), c(&b, 2));
    Tensor::cat(
        vec![
            ay.clone() * bz.clone() - az.clone() * by.clone(),
            az * bx.clone() - ax.clone() * bz,
            ax * by - ay * bx,
        ],
        1,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::{QuatAffine, quat_to_rot};
    use proptest::prelude::*;

    /// f32 rounding: each entry of a product of a few unit-magnitude 3×3 matrices carries a
    /// relative error of a few ulp (~1e-7); 1e-5 leaves ample margin.
    const ROT_TOL: f32 = 1e-5;
    /// Points of magnitude up to ~100 lose ~100 × 1e-7 per rounding; a few roundings in a
    /// round trip stay below 1e-4.
    const POINT_TOL: f32 = 1e-4;

    fn random_rigid(quats: Vec<f32>, trans: Vec<f32>) -> Rigid {
        let b = trans.len() / 3;
        QuatAffine::new(t2(quats, [b, 4]), t2(trans, [b, 3])).to_rigid()
    }

    /// Quaternions bounded away from zero so that normalisation is well conditioned.
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
    fn identity_is_neutral() {
        let id = Rigid::identity(2, &device());
        let pts = t3((0..12).map(|x| x as f32).collect(), [2, 2, 3]);
        assert_eq!(max_abs_diff(id.apply(pts.clone()), pts), 0.0);
        assert_eq!(
            vec(id.to_flat12()),
            [1., 0., 0., 0., 1., 0., 0., 0., 1., 0., 0., 0.].repeat(2)
        );
    }

    #[test]
    fn from_3_points_canonical_frame() {
        // Points already on the axes of a translated frame.
        let neg_x = t2(vec![-2.0, 5.0, 1.0], [1, 3]);
        let origin = t2(vec![0.0, 5.0, 1.0], [1, 3]);
        let xy = t2(vec![3.0, 9.0, 1.0], [1, 3]);
        let r = Rigid::from_3_points(neg_x, origin, xy);
        // x axis = +x, y axis = +y, z = +z; translation = origin.
        let flat = vec(r.to_flat12());
        let expected = [1., 0., 0., 0., 1., 0., 0., 0., 1., 0., 5., 1.];
        for (a, b) in flat.iter().zip(expected) {
            approx::assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
        }
    }

    #[test]
    fn flat12_round_trip_and_layout() {
        let rot = t3((0..9).map(|x| x as f32).collect(), [1, 3, 3]);
        let trans = t2(vec![9., 10., 11.], [1, 3]);
        let r = Rigid::new(rot, trans);
        let flat = r.to_flat12();
        assert_eq!(
            vec(flat.clone()),
            (0..12).map(|x| x as f32).collect::<Vec<_>>()
        );
        let back = Rigid::from_flat12(flat);
        assert_eq!(vec(back.rot), (0..9).map(|x| x as f32).collect::<Vec<_>>());
    }

    #[test]
    fn repeat_interleave_and_select() {
        let r = random_rigid(
            vec![1., 0., 0., 0., 0., 1., 0., 0.],
            vec![1., 2., 3., 4., 5., 6.],
        );
        let rep = r.repeat_interleave(3);
        assert_eq!(rep.batch_size(), 6);
        let t = vec(rep.trans);
        assert_eq!(&t[6..9], &[1., 2., 3.]);
        assert_eq!(&t[9..12], &[4., 5., 6.]);
        let idx = Tensor::<1, Int>::from_data([1i64, 0], &device());
        assert_eq!(vec(r.select(idx).trans), vec![4., 5., 6., 1., 2., 3.]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn apply_then_invert_apply_is_identity(
            q in quats(3), t in coords(9), p in coords(3 * 2 * 3)
        ) {
            let r = random_rigid(q, t);
            let pts = t3(p, [3, 2, 3]);
            let back = r.invert_apply(r.apply(pts.clone()));
            prop_assert!(max_abs_diff(back, pts) < POINT_TOL);
        }

        #[test]
        fn compose_with_inverse_is_identity(q in quats(4), t in coords(12)) {
            let r = random_rigid(q, t);
            let id = Rigid::identity(4, &device());
            let left = r.invert().compose(&r);
            let right = r.compose(&r.invert());
            for x in [left, right] {
                prop_assert!(max_abs_diff(x.rot, id.rot.clone()) < ROT_TOL);
                prop_assert!(max_abs_diff(x.trans, id.trans.clone()) < POINT_TOL);
            }
        }

        #[test]
        fn compose_matches_sequential_apply(
            q1 in quats(2), t1 in coords(6), q2 in quats(2), t2_ in coords(6),
            p in coords(2 * 3 * 3)
        ) {
            let a = random_rigid(q1, t1);
            let b = random_rigid(q2, t2_);
            let pts = t3(p, [2, 3, 3]);
            let composed = a.compose(&b).apply(pts.clone());
            let sequential = a.apply(b.apply(pts));
            prop_assert!(max_abs_diff(composed, sequential) < POINT_TOL);
        }

        #[test]
        fn apply_vec_matches_apply(q in quats(2), t in coords(6), p in coords(6)) {
            let r = random_rigid(q, t);
            let v = t2(p.clone(), [2, 3]);
            let a = r.apply_vec(v);
            let b = r.apply(t3(p, [2, 1, 3])).reshape([2, 3]);
            prop_assert!(max_abs_diff(a, b) < POINT_TOL);
        }

        #[test]
        fn from_3_points_is_orthonormal_right_handed(pts in coords(3 * 3 * 3)) {
            let b = 3;
            let p = |i: usize| t2(pts[i * 3 * b..(i + 1) * 3 * b].to_vec(), [b, 3]);
            // Skip (near-)collinear triples, where Gram–Schmidt is ill conditioned.
            let v = |i: usize, k: usize| -> [f32; 3] {
                let s = &pts[i * 3 * b + 3 * k..i * 3 * b + 3 * k + 3];
                [s[0], s[1], s[2]]
            };
            // f32 rounding relative to the point distances (a few ulp, amplified by at most
            // 1/sin(angle) ≤ 20 in Gram–Schmidt): 1e-5 relative.
            let mut tol = [0.0f32; 3];
            for (k, tol_k) in tol.iter_mut().enumerate() {
                let (a, o, c) = (v(0, k), v(1, k), v(2, k));
                let e0 = [o[0] - a[0], o[1] - a[1], o[2] - a[2]];
                let e1 = [c[0] - o[0], c[1] - o[1], c[2] - o[2]];
                let cr = [
                    e0[1] * e1[2] - e0[2] * e1[1],
                    e0[2] * e1[0] - e0[0] * e1[2],
                    e0[0] * e1[1] - e0[1] * e1[0],
                ];
                let n = |x: [f32; 3]| (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt();
                prop_assume!(n(cr) > 0.05 * n(e0).max(1.0) * n(e1).max(1.0));
                *tol_k = 1e-5 * (n(e0) + n(e1)).max(1.0);
            }
            let r = Rigid::from_3_points(p(0), p(1), p(2));
            assert_rotation(r.rot.clone())?;
            // The origin maps to the middle point, the first point lies on the negative x axis,
            // the third in the xy plane with positive y.
            let local0 = vec(r.invert_apply(p(0).reshape([b, 1, 3])));
            let local2 = vec(r.invert_apply(p(2).reshape([b, 1, 3])));
            for k in 0..b {
                prop_assert!(local0[3 * k] < 0.0);
                prop_assert!(local0[3 * k + 1].abs() < tol[k]);
                prop_assert!(local0[3 * k + 2].abs() < tol[k]);
                prop_assert!(local2[3 * k + 1] > 0.0);
                prop_assert!(local2[3 * k + 2].abs() < tol[k]);
            }
        }

        #[test]
        fn flat12_round_trips(q in quats(2), t in coords(6)) {
            let r = random_rigid(q, t);
            let back = Rigid::from_flat12(r.to_flat12());
            prop_assert_eq!(vec(back.rot), vec(r.rot));
            prop_assert_eq!(vec(back.trans), vec(r.trans));
        }
    }

    /// Asserts `R Rᵀ = I` and `det R = 1` for every matrix.
    pub(crate) fn assert_rotation(rot: Tensor<3>) -> Result<(), TestCaseError> {
        let b = rot.dims()[0];
        let rrt = rot.clone().matmul(rot.clone().swap_dims(1, 2));
        let id = Tensor::<2>::eye(3, &device())
            .unsqueeze::<3>()
            .repeat_dim(0, b);
        prop_assert!(max_abs_diff(rrt, id) < ROT_TOL);
        for m in vec(rot).chunks(9) {
            let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
                + m[2] * (m[3] * m[7] - m[4] * m[6]);
            prop_assert!((det - 1.0).abs() < ROT_TOL);
        }
        Ok(())
    }

    #[test]
    fn quat_to_rot_of_identity() {
        let r = quat_to_rot(t2(vec![1., 0., 0., 0.], [1, 4]));
        assert_eq!(vec(r), vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    }
}
