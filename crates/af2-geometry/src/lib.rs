//! Rigid-body geometry for AlphaFold2 on Burn tensors.
//!
//! Two representations of per-residue frames, as in AlphaFold 2.3.2:
//! - [`Rigid`]: a rotation matrix and a translation (AlphaFold's `r3.Rigids`), used for the
//!   side-chain frames and atom placement;
//! - [`QuatAffine`]: a quaternion kept in sync with its rotation matrix, plus a translation
//!   (AlphaFold's `quat_affine.QuatAffine`), used for the backbone frames that the structure
//!   module updates.
//!
//! Every batch of frames is flattened to one leading axis `B`. A frame maps local coordinates
//! to global ones: `x_global = rot · x_local + trans`.

pub mod constant;
mod quat_affine;
mod rigid;

pub use constant::constant;
pub use quat_affine::{QuatAffine, quat_multiply_by_vec, quat_to_rot};
pub use rigid::Rigid;

#[cfg(test)]
pub(crate) mod test_util {
    use burn::tensor::{Device, Tensor, TensorData};

    #[allow(deprecated)]
    pub fn device() -> Device {
        Device::ndarray()
    }

    pub fn t2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), &device())
    }

    pub fn t3(v: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, shape), &device())
    }

    pub fn vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Largest absolute elementwise difference.
    pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        vec(a)
            .iter()
            .zip(vec(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
