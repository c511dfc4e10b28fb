//! Experiment: `y = x · W` with cube-scope (workgroup) matrices (`VK_NV_cooperative_matrix2`):
//! one cube multiplies a `[TM, K]` row tile by a `[K, TN]` weight block and stores the f16
//! product, the driver staging both. Rows must come in whole tiles.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::attention_kernel::{address_type, cube_count};

/// Tile rows, tile columns and units a cube from `AF2_CM2=TM,TN,UNITS` (default 64,128,128).
pub fn shape() -> (usize, usize, usize) {
    let parsed = std::env::var("AF2_CM2").ok().and_then(|value| {
        let parts: Vec<usize> = value
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        (parts.len() == 3).then(|| (parts[0], parts[1], parts[2]))
    });
    parsed.unwrap_or((64, 128, 128))
}

pub(crate) fn launch(x: CubeTensor, weight: CubeTensor) -> CubeTensor {
    let x = into_contiguous(untile(x));
    let weight = into_contiguous(untile(weight));
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let n = weight.meta.shape()[1];
    let (tm, tn, units) = shape();
    assert!(
        m % tm == 0 && n % tn == 0,
        "cube-scope linear: whole tiles only"
    );
    let client = x.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([m, n]),
        x.dtype,
    );
    let cubes = (m / tm) * (n / tn);
    let address_type = address_type([&x, &weight, &out]);
    // SAFETY: whole tiles (asserted): every load and store stays inside x, weight and out.
    unsafe {
        kernel::linear_cube_kernel::launch_unchecked(
            &client,
            cube_count(cubes),
            CubeDim::new_1d(units as u32),
            address_type,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            cubes,
            tm,
            tn,
            k,
            dtype_to_storage_type(out.dtype),
        );
    }
    out
}

mod kernel {
    use cubecl::cmma::{self, Cube, Matrix, MatrixIdent, MatrixLayout};
    use cubecl::prelude::*;

    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn linear_cube_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        out: &mut Tensor<F>,
        cubes: usize,
        #[comptime] tm: usize,
        #[comptime] tn: usize,
        #[comptime] k: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        if CUBE_POS >= cubes {
            terminate!();
        }
        let n = weight.shape(1);
        let blocks = n / tn;
        let row0 = (CUBE_POS / blocks) * tm;
        let col0 = (CUBE_POS % blocks) * tn;
        let x_len = x.len();
        let w_len = weight.len();
        let out_len = out.len();
        let a = Matrix::<F, Cube>::from_slice(
            MatrixIdent::A,
            tm,
            tn,
            k,
            MatrixLayout::RowMajor,
            &x[row0 * k..x_len],
            k as u32,
        );
        let b = Matrix::<F, Cube>::from_slice(
            MatrixIdent::B,
            tm,
            tn,
            k,
            MatrixLayout::RowMajor,
            &weight[col0..w_len],
            n as u32,
        );
        let c = Matrix::<f32, Cube>::from_value(
            MatrixIdent::Accumulator,
            tm,
            tn,
            k,
            MatrixLayout::Undefined,
            0.0f32,
        );
        cmma::execute(&a, &b, &c, &c);
        let d = cmma::cast::<f32, F, Cube>(&c);
        cmma::store(
            &mut out[row0 * n + col0..out_len],
            &d,
            n as u32,
            MatrixLayout::RowMajor,
        );
    }
}
