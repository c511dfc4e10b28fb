//! Constant tensors (coefficient tables, index ranges) uploaded once per device and kept.
//!
//! A forward pass then writes no host data to the device after its inputs: a recorded graph
//! (`burn::tensor::capture`) cannot hold an upload, and every upload is a host-to-device copy
//! that a repeated pass need not pay again.

use std::any::Any;
use std::sync::Mutex;

use burn::tensor::kind::Basic;
use burn::tensor::{Device, Tensor, TensorData};

/// One kept constant: what it was built for and the tensor.
struct Entry {
    name: String,
    shape: Vec<usize>,
    device: Device,
    tensor: Box<dyn Any + Send>,
}

static KEPT: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The constant `name` of `shape` on `device`: uploaded from `data()` the first time, the kept
/// tensor afterwards. `data` must depend on nothing but `name` and `shape` (a name can carry
/// parameters: `format!("bins {min} {max}")`).
///
/// # Panics
/// If `data()` does not have `shape`, or `name` was kept before as another tensor type.
pub fn constant<const D: usize, K>(
    name: &str,
    shape: [usize; D],
    device: &Device,
    data: impl FnOnce() -> TensorData,
) -> Tensor<D, K>
where
    K: Basic + 'static,
    Tensor<D, K>: Send,
{
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = kept
        .iter()
        .find(|e| e.name == name && e.shape == shape && e.device == *device);
    if let Some(entry) = found {
        return entry
            .tensor
            .downcast_ref::<Tensor<D, K>>()
            .unwrap_or_else(|| panic!("constant {name}: kept as another tensor type"))
            .clone();
    }
    let data = data();
    assert_eq!(
        data.shape().as_slice(),
        shape.as_slice(),
        "constant {name}: shape"
    );
    let tensor = Tensor::<D, K>::from_data(data, device);
    kept.push(Entry {
        name: name.to_string(),
        shape: shape.to_vec(),
        device: device.clone(),
        tensor: Box::new(tensor.clone()),
    });
    tensor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::device;
    use burn::tensor::Int;

    #[test]
    fn a_constant_is_built_once_per_name_and_shape() {
        let mut builds = 0;
        let mut get = |n: usize| {
            constant::<1, Int>("test range", [n], &device(), || {
                builds += 1;
                TensorData::new((0..n as i64).collect::<Vec<_>>(), [n])
            })
        };
        let a = get(3);
        let b = get(3);
        let c = get(4);
        assert_eq!(a.into_data(), b.into_data());
        assert_eq!(c.dims(), [4]);
        assert_eq!(builds, 2);
    }
}
