//! The linear kernel as a backend operation: one operation per output stage, and the launch
//! that checks its inputs and picks the kernel's compile-time form.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::kernel::linear_mma_kernel;
use super::{
    EDGE_BLOCK, FUSED_LAUNCHES, PLANE, TILE_ROWS, VECTOR, block_width, planes_for, row_groups,
    split_stripes_min_rows, target_cubes,
};
use crate::attention_kernel::{address_type, cube_count};

/// Linear layer as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait LinearOps: Backend {
    /// `x · weight + bias` for `x` `[M, K]`, `weight` `[K, N]`, `bias` `[N]`; with `relu`,
    /// `max(·, 0)` of it.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `(x · weight + bias) · sigmoid(gate) + residual`, gate and residual `[M, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_gated_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight + bias + residual`, residual `[M, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(x · weight + bias)ᵀ` `[N, M]` for `x` `[M, K]`, `weight` `[K, N]`, `bias` `[N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[0] = weight[1];
        shape[1] = x[0];
        shape
    })]
    fn linear_rows_transposed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `mask · projection · sigmoid(gate)` `[N / 2, M]` from `y = x · weight + bias`, whose
    /// [`EDGE_BLOCK`]-column blocks hold projections in their first half and the gates in their
    /// second (see [`try_gated_edges_kernel`](super::try_gated_edges_kernel)); `mask` `[M]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[0] = weight[1] / 2;
        shape[1] = x[0];
        shape
    })]
    fn linear_edges_gated(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight + bias` with its first `columns` output columns times `scale`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_scaled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        columns: usize,
    ) -> FloatTensor<Self>;

    /// `(x · sigmoid(gates[:, first .. first + K])) · weight + bias`, `gates` `[M, G]`: an
    /// attention's gate applied to its output on the way into the output projection.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_input_gated(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        first: usize,
    ) -> FloatTensor<Self>;

    /// [`LinearOps::linear_rows_input_gated`] `+ residual`, residual `[M, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_input_gated_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        first: usize,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(x · weight + bias) / divisor + residual`: bias `[P]` repeated along the row (P divides
    /// N), `divisor` `[M, N / width]` with one value per row and `width` columns (the kernel's
    /// column block), residual `[M, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_divided_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        divisor: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight` for `x` `[M, K]`, `weight` `[K, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl LinearOps for CubeBackend {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            relu,
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_gated_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            gate: Some(gate),
            residual: Some(residual),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            residual: Some(residual),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_transposed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            transposed: true,
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_edges_gated(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            transposed: true,
            mask: Some(mask),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_scaled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        columns: usize,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            scale: Some((scale, columns)),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_input_gated(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        first: usize,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            input_gate: Some((gates, first)),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_input_gated_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        first: usize,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            input_gate: Some((gates, first)),
            residual: Some(residual),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_divided_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        divisor: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let stage = Stage {
            divisor: Some(divisor),
            residual: Some(residual),
            ..Stage::default()
        };
        launch(x, weight, Some(bias), stage)
    }

    fn linear_rows_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(x, weight, None, Stage::default())
    }
}

/// What the kernel writes (see the kernel's documentation): `[M, N]` with the [`Epilogue`]'s
/// operations, `[N, M]` when transposed, or with a mask (and transposed) `[N / 2, M]`, masked
/// projections times the sigmoid of their gates.
#[derive(Default)]
struct Stage {
    relu: bool,
    gate: Option<CubeTensor>,
    residual: Option<CubeTensor>,
    transposed: bool,
    mask: Option<CubeTensor>,
    scale: Option<(f32, usize)>,
    /// `(gates, first)`: the input times `sigmoid(gates[:, first .. first + K])`.
    input_gate: Option<(CubeTensor, usize)>,
    /// `[M, N / n_block]`: the output divided by one value per row and column block.
    divisor: Option<CubeTensor>,
}

fn launch(x: CubeTensor, weight: CubeTensor, bias: Option<CubeTensor>, stage: Stage) -> CubeTensor {
    let x = into_contiguous(untile(x));
    let weight = into_contiguous(untile(weight));
    let bias = bias.map(untile);
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let n = weight.meta.shape()[1];
    let contiguous = |t: CubeTensor| into_contiguous(untile(t));
    let Stage {
        relu,
        gate,
        residual,
        transposed,
        mask,
        scale,
        input_gate,
        divisor,
    } = stage;
    let (gate, residual, mask) = (
        gate.map(contiguous),
        residual.map(contiguous),
        mask.map(contiguous),
    );
    let divisor = divisor.map(untile);
    let bias_period = bias.as_ref().map_or(n, |bias| bias.meta.shape()[0]);
    assert!(
        bias_period > 0 && n.is_multiple_of(bias_period),
        "linear kernel: bias [{bias_period}] for {n} columns"
    );
    if let Some(divisor) = &divisor {
        assert_eq!(
            divisor.meta.shape().to_vec(),
            [m, n / block_width(n)],
            "linear kernel: divisor shape"
        );
        assert!(
            !transposed && mask.is_none(),
            "linear kernel: divisor on rows"
        );
    }
    let (input_gate, gate_first) = match input_gate {
        Some((gates, first)) => (Some(contiguous(gates)), first),
        None => (None, 0),
    };
    if let Some(gates) = &input_gate {
        let (rows, width) = (gates.meta.shape()[0], gates.meta.shape()[1]);
        assert!(
            rows == m
                && gate_first + k <= width
                && gate_first.is_multiple_of(VECTOR)
                && width.is_multiple_of(VECTOR),
            "linear kernel: input gates [{rows}, {width}] from column {gate_first} for x [{m}, {k}]"
        );
    }
    if let Some((_, columns)) = scale {
        assert!(
            columns.is_multiple_of(VECTOR) && !transposed && mask.is_none(),
            "linear kernel: scaled columns come in whole vectors of row-major outputs"
        );
    }
    // The backend operations are public: the kernel's unchecked reads and writes rest on these.
    for extra in [&gate, &residual].into_iter().flatten() {
        assert_eq!(
            extra.meta.shape().to_vec(),
            [m, n],
            "linear kernel: gate/residual shape"
        );
    }
    if relu
        || gate.is_some()
        || residual.is_some()
        || mask.is_some()
        || scale.is_some()
        || input_gate.is_some()
        || divisor.is_some()
    {
        FUSED_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(mask) = &mask {
        assert_eq!(mask.meta.shape().to_vec(), [m], "linear kernel: mask shape");
        assert!(
            m.is_multiple_of(VECTOR) && block_width(n) == EDGE_BLOCK,
            "linear kernel: gated edges need rows in 8s and N in {EDGE_BLOCK}s"
        );
    }
    let out_shape = match (&mask, transposed) {
        (Some(_), _) => [n / 2, m],
        (None, true) => [n, m],
        (None, false) => [m, n],
    };
    let client = x.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new(out_shape),
        x.dtype,
    );
    let n_block = block_width(n);
    let max_units = client.properties().hardware.max_units_per_cube as usize;
    let group_planes = planes_for(n_block);
    let groups = row_groups(
        m,
        k,
        PLANE * group_planes,
        max_units,
        split_stripes_min_rows(),
    );
    let planes = group_planes * groups;
    let column_blocks = n / n_block;
    let tiles = m.div_ceil(TILE_ROWS);
    let cubes_per_block = tiles.min(target_cubes().div_ceil(column_blocks)).max(1);
    let address_type = address_type(
        [&x, &weight, &out].into_iter().chain(
            [&bias, &gate, &residual, &mask, &input_gate, &divisor]
                .into_iter()
                .flatten(),
        ),
    );
    let dtypes = [
        dtype_to_storage_type(out.dtype),
        dtype_to_storage_type(bias.as_ref().map_or(out.dtype, |b| b.dtype)),
    ];
    // SAFETY: reads of x stay below row M (checked per element) and column K, of the weight
    // inside [0, K) × [0, N) (`n_block` divides N), of the bias inside [0, P) (column modulo
    // its length P), of the gate and residual (contiguous [M, N], asserted above) at the
    // output's own indices, of the divisor ([M, N / n_block], asserted) at row and block, of
    // the mask ([M], M a multiple of 8, asserted) below row M, of the input gates (contiguous [M, G],
    // columns first .. first + K inside G, asserted) below row M; writes of the output stay
    // below row M and column N (N / 2 gated).
    unsafe {
        linear_mma_kernel::launch_unchecked(
            &client,
            cube_count(cubes_per_block * column_blocks),
            CubeDim::new_2d(PLANE as u32, planes as u32),
            address_type,
            VECTOR,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.map(CubeTensor::into_tensor_arg).into(),
            gate.map(CubeTensor::into_tensor_arg).into(),
            residual.map(CubeTensor::into_tensor_arg).into(),
            mask.map(CubeTensor::into_tensor_arg).into(),
            input_gate.map(CubeTensor::into_tensor_arg).into(),
            divisor.map(CubeTensor::into_tensor_arg).into(),
            out.clone().into_tensor_arg(),
            cubes_per_block,
            scale.map_or(1.0, |(scale, _)| scale),
            scale.map_or(0, |(_, columns)| columns),
            gate_first,
            bias_period,
            k,
            n_block,
            planes,
            VECTOR,
            transposed,
            relu,
            scale.is_some(),
            groups,
            bias_period != n,
            dtypes,
        );
    }
    out
}
