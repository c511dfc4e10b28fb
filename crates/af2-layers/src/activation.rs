//! Activations written with as few tensor operations as they need: on the fusion backend every
//! recorded operation costs host time, which bounds a small prediction's latency.

use burn::tensor::{DType, FloatDType, Tensor};

/// The logistic sigmoid `1 / (1 + exp(-x))`, computed in f32 for half-precision inputs.
///
/// Four tensor operations (six in half precision), where Burn's `sigmoid` records eight
/// (`exp(-log(1 + exp(-x)))` between two casts). Saturates to exactly 0 and 1, without NaN, for
/// logits of any size.
pub fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    let x = if matches!(dtype, DType::F16 | DType::BF16) {
        x.cast(FloatDType::F32)
    } else {
        x
    };
    x.neg().exp().add_scalar(1.0).recip().cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[allow(deprecated)] // ndarray is the CPU reference backend.
    fn device() -> Device {
        Device::ndarray()
    }

    #[test]
    fn matches_the_logistic_function_in_f64() {
        let device = device();
        let inputs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).collect();
        let ours = sigmoid(Tensor::<1>::from_data(
            TensorData::new(inputs.clone(), [inputs.len()]),
            &device,
        ));
        let ours = ours.into_data().try_to_vec::<f32>().unwrap();
        for (x, y) in inputs.iter().zip(&ours) {
            let exact = 1.0 / (1.0 + (-f64::from(*x)).exp());
            // Two roundings of f32 arithmetic (exp, then the reciprocal of 1 + e): a few ulps.
            approx::assert_relative_eq!(f64::from(*y), exact, max_relative = 4.0 * 1.2e-7);
        }
    }

    #[test]
    fn saturates_without_nan() {
        let device = device();
        let x = Tensor::<1>::from_data(
            TensorData::new(vec![-1e30f32, -1000.0, 1000.0, 1e30, 0.0], [5]),
            &device,
        );
        let y = sigmoid(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![0.0, 0.0, 1.0, 1.0, 0.5]);
    }

    #[test]
    fn half_precision_is_computed_in_f32_and_rounded_once() {
        let device = Device::flex(); // ndarray has no f16.
        let inputs: Vec<f32> = (-60..=60).map(|i| i as f32 * 0.25).collect();
        let x = Tensor::<1>::from_data(TensorData::new(inputs.clone(), [inputs.len()]), &device);
        let half = sigmoid(x.clone().cast(FloatDType::F16));
        assert_eq!(half.dtype(), DType::F16);
        let expected = sigmoid(x).cast(FloatDType::F16);
        let diff: f32 = (half.cast(FloatDType::F32) - expected.cast(FloatDType::F32))
            .abs()
            .max()
            .into_scalar();
        assert_eq!(diff, 0.0);
    }
}
