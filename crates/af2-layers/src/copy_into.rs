//! Writing a tensor's values into another tensor's existing buffer (feature `cube`): the inputs
//! of a recorded graph (`burn::tensor::capture`) are the buffers the recording read, so fresh
//! inputs must land in those same buffers before each replay. Burn's own operations always
//! write new tensors; this one launches a copy into the destination's memory.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, Int, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::attention_kernel::{address_type, cube_count};

/// Units per cube of the copy.
const UNITS: usize = 256;

/// An in-place copy as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait CopyIntoOps: Backend {
    /// Writes `src` into `dst`'s buffer and returns `dst`'s tensor (the same memory).
    #[fusion(dtype = dst, shape = dst)]
    fn copy_into(dst: FloatTensor<Self>, src: FloatTensor<Self>) -> FloatTensor<Self>;

    /// [`CopyIntoOps::copy_into`] for integer tensors.
    #[fusion(dtype = dst, shape = dst)]
    fn copy_into_int(dst: IntTensor<Self>, src: IntTensor<Self>) -> IntTensor<Self>;
}

impl CopyIntoOps for CubeBackend {
    fn copy_into(dst: FloatTensor<Self>, src: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(dst, src)
    }

    fn copy_into_int(dst: IntTensor<Self>, src: IntTensor<Self>) -> IntTensor<Self> {
        launch(dst, src)
    }
}

/// Whether [`copy_into`] takes tensors on this device (a cubecl one).
pub fn supported(device: &burn::tensor::Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// Writes `src`'s values into `dst`'s buffer, in place: whatever reads `dst`'s memory later (a
/// recorded graph's replay) reads them. The returned tensor shares `dst`'s memory; keep it
/// until the device has run the copy (a lazy backend may skip an operation whose result is
/// dropped unread).
///
/// # Shapes
/// - dst, src: the same shape; `dst` contiguous
///
/// # Panics
/// If the shapes or dtypes differ, `dst` is not contiguous, or the device is not a cubecl one.
pub fn copy_into<const D: usize>(dst: &Tensor<D>, src: Tensor<D>) -> Tensor<D> {
    check(
        &dst.device(),
        [&dst.dims()[..], &src.dims()[..]],
        [dst.dtype(), src.dtype()],
    );
    Tensor::from_dispatch(Dispatch::copy_into(
        dst.clone().into_dispatch(),
        src.into_dispatch(),
    ))
}

/// [`copy_into`] for integer tensors.
///
/// # Panics
/// As [`copy_into`].
pub fn copy_into_int<const D: usize>(dst: &Tensor<D, Int>, src: Tensor<D, Int>) -> Tensor<D, Int> {
    check(
        &dst.device(),
        [&dst.dims()[..], &src.dims()[..]],
        [dst.dtype(), src.dtype()],
    );
    Tensor::from_dispatch(Dispatch::copy_into_int(
        dst.clone().into_dispatch(),
        src.into_dispatch(),
    ))
}

fn check(device: &Device, [dst, src]: [&[usize]; 2], [dst_dtype, src_dtype]: [DType; 2]) {
    assert!(supported(device), "copy_into: not a cubecl device");
    assert_eq!(dst, src, "copy_into: shapes differ");
    assert_eq!(dst_dtype, src_dtype, "copy_into: dtypes differ");
}

fn launch(dst: CubeTensor, src: CubeTensor) -> CubeTensor {
    assert!(
        dst.is_contiguous(),
        "copy_into: the destination must be contiguous"
    );
    let src = into_contiguous(untile(src));
    let len = dst.meta.shape().num_elements();
    let vector = if len.is_multiple_of(4) { 4 } else { 1 };
    let client = dst.client.clone();
    let dtype = dtype_to_storage_type(dst.dtype);
    let address = address_type([&dst, &src]);
    let vectors = len / vector;
    // SAFETY: both tensors are contiguous with `len` elements; units past `vectors` touch
    // nothing.
    unsafe {
        kernel::copy_kernel::launch_unchecked(
            &client,
            cube_count(vectors.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            address,
            vector,
            src.into_tensor_arg(),
            dst.clone().into_tensor_arg(),
            vectors,
            dtype,
        );
    }
    dst
}

mod kernel {
    use super::UNITS;
    use cubecl::prelude::*;

    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn copy_kernel<T: Numeric, N: Size>(
        src: &Tensor<Vector<T, N>>,
        dst: &mut Tensor<Vector<T, N>>,
        vectors: usize,
        #[define(T)] _dtype: ElemType,
    ) {
        let i = CUBE_POS * UNITS + UNIT_POS as usize;
        if i < vectors {
            dst[i] = src[i];
        }
    }
}
