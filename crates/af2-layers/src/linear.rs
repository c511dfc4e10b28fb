//! Linear layers in haiku layout (weight `[in, out]`), applied as one 2-D matmul.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::sigmoid;

/// `y = x · weight + bias` over the last axis. Field names match `burn::nn::Linear`, so stored
/// weights load by the same names.
///
/// Burn's own `Linear` keeps inputs whose rows fill its matmul tiles (`[.., N, N, c]` with N a
/// multiple of 32) as a batched matmul against the broadcast weight; on the H100 that was 4x
/// slower than the same product as one `[rows, c]` matrix (L=256, `af2 bench-block`), and the
/// pair stack is made of such products. This one always flattens the leading axes.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

/// A linear layer `[d_input] -> [d_output]` with a bias, zero-initialised (weights are loaded).
pub fn linear(d_input: usize, d_output: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::zeros([d_input, d_output], device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_output], device))),
    }
}

impl Linear {
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let mut dims = input.dims();
        let [d_input, d_output] = self.weight.dims();
        assert_eq!(
            dims[D - 1],
            d_input,
            "linear layer expects {d_input} input channels"
        );
        let rows = dims[..D - 1].iter().product();
        let output = matmul_bias(
            input.reshape([rows, d_input]),
            self.weight.val(),
            self.bias.as_ref().map(Param::val),
        );
        dims[D - 1] = d_output;
        output.reshape(dims)
    }
}

/// `x · weight (+ bias)`: the tensor-core kernel where it applies (f16 on a GPU with matrix
/// instructions, inputs in 16s up to 128 or in 128s up to 2048, outputs in 64s:
/// [`crate::linear_kernel`]), the split-K kernel for f32 of few rows on a GPU
/// ([`crate::split_k_linear`]; the bias added by its summing pass, later elementwise stages of
/// [`matmul_bias_with`] not fused), else one Burn matmul and the bias add. There the bias is shaped before the matmul is recorded, so
/// that the add directly follows the matmul in the op stream and Burn's fusion folds it into
/// the matmul's output stage (one GPU kernel instead of a matmul and a separate add).
///
/// # Shapes
/// - x: `[rows, d_input]`, weight: `[d_input, d_output]`, bias: `[d_output]`
/// - output: `[rows, d_output]`
pub fn matmul_bias(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if let Some(output) = crate::linear_kernel::try_linear_kernel(&x, &weight, bias.as_ref()) {
        return output;
    }
    #[cfg(feature = "cube")]
    if let Some(output) = crate::split_k_linear::try_split_k_linear(&x, &weight, bias.as_ref()) {
        return output;
    }
    let bias = bias.map(|bias| bias.unsqueeze::<2>());
    let output = x.matmul(weight);
    match bias {
        Some(bias) => output + bias,
        None => output,
    }
}

/// `a · b` over the last two dimensions (leading dimensions equal). On cubecl devices f32
/// matrices of few rows run on [`crate::split_k_linear`] (the structure module's attention),
/// else Burn's matmul.
///
/// # Shapes
/// - a: `[..., M, K]`, b: `[..., K, N]`
/// - output: `[..., M, N]`
pub fn batched_matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cube")]
    return crate::split_k_linear::split_k_matmul(a, b);
    #[cfg(not(feature = "cube"))]
    a.matmul(b)
}

/// What [`matmul_bias_with`] does around `y = x · weight + bias`: an input gate on `x` before
/// the product; after it the scale of its first columns, `max(y, 0)` with `relu`,
/// `y · sigmoid(gate)`, then `y + residual`. On the f16 linear kernel these run in f32 on the
/// f16-rounded product and the result is rounded once more.
#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    /// ReLU.
    pub relu: bool,
    /// `[M, N]`, the gate's pre-activation.
    pub gate: Option<Tensor<2>>,
    /// `[M, N]`, added last.
    pub residual: Option<Tensor<2>>,
    /// `(columns, scale)`: the first `columns` output columns times `scale` (the queries of a
    /// shared projection).
    pub scale_columns: Option<(usize, f32)>,
    /// `(gates, first)`, gates `[M, G]`: the input is multiplied by `sigmoid(gates[:, first ..
    /// first + d_input])` before the product (an attention's gate on its way into the output
    /// projection). On the f16 linear kernel in f32, rounded once, as the input is staged.
    pub input_gate: Option<(Tensor<2>, usize)>,
    /// `(divisor, width)`, divisor `[M, N / width]`: each row's output divided by one value a
    /// `width`-column block, before the residual is added (the outer product mean's per-pair
    /// count, its `c_z` channels a block). The linear kernel takes it with a residual alone,
    /// where `width` is its column block (128).
    pub divisor: Option<(Tensor<2>, usize)>,
}

/// `x · weight (+ bias)` finished by `epilogue`: on the tensor-core kernel in one pass where it
/// takes the inputs and the combination ([`crate::linear_kernel::try_linear_kernel_with`]), else
/// [`matmul_bias`] and the epilogue's operations as Burn tensor operations. The bias may be
/// shorter than a row: `[P]` with `P` dividing `d_output` is repeated along it.
///
/// # Shapes
/// - x: `[rows, d_input]`, weight: `[d_input, d_output]`, bias: `[P]`
/// - gate and residual: `[rows, d_output]`
/// - output: `[rows, d_output]`
pub fn matmul_bias_with(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    epilogue: Epilogue,
) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if let Some(output) =
        crate::linear_kernel::try_linear_kernel_with(&x, &weight, bias.as_ref(), &epilogue)
    {
        return output;
    }
    if let Some((gates, first)) = epilogue.input_gate {
        // The gate as a Burn operation; the rest of the epilogue may still run on the kernel.
        let width = x.dims()[1];
        let x = x * sigmoid(gates.narrow(1, first, width));
        let rest = Epilogue {
            input_gate: None,
            ..epilogue
        };
        return matmul_bias_with(x, weight, bias, rest);
    }
    let [rows, d_output] = [x.dims()[0], weight.dims()[1]];
    let mut output = match bias {
        Some(bias) if bias.dims()[0] != d_output => {
            let period = bias.dims()[0];
            let repeats = d_output / period;
            assert_eq!(
                repeats * period,
                d_output,
                "bias [{period}] must divide {d_output}"
            );
            let product = matmul_bias(x, weight, None).reshape([rows, repeats, period]);
            (product + bias.unsqueeze::<3>()).reshape([rows, d_output])
        }
        bias => matmul_bias(x, weight, bias),
    };
    if let Some((columns, scale)) = epilogue.scale_columns {
        let width = output.dims()[1];
        let scaled = output.clone().narrow(1, 0, columns).mul_scalar(scale);
        output = Tensor::cat(vec![scaled, output.narrow(1, columns, width - columns)], 1);
    }
    if epilogue.relu {
        // ReLU as one clamp, which Burn's fusion folds into the matmul's output stage
        // (`clamp_min` it does not fuse).
        output = output.clamp(0.0, f32::INFINITY);
    }
    if let Some((divisor, width)) = epilogue.divisor {
        let blocks = d_output / width;
        let divisor = divisor.reshape([rows, blocks, 1]);
        output = (output.reshape([rows, blocks, width]) / divisor).reshape([rows, d_output]);
    }
    if let Some(gate) = epilogue.gate {
        output = output * sigmoid(gate);
    }
    match epilogue.residual {
        Some(residual) => residual + output,
        None => output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn matches_burn_linear_on_every_rank() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 2]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let ours = Linear {
            weight: Param::from_tensor(normal([5, 3])),
            bias: Some(Param::from_tensor(normal([1, 3]).reshape([3]))),
        };
        let burns = burn::nn::Linear {
            weight: ours.weight.clone(),
            bias: ours.bias.clone(),
        };
        let x = Tensor::<4>::random([2, 4, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        let diff: f32 = (ours.forward(x.clone()) - burns.forward(x.clone()))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "rank 4 differs by {diff}");
        let x = x.reshape([48, 5]);
        let diff: f32 = (ours.forward(x.clone()) - burns.forward(x))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "rank 2 differs by {diff}");
    }

    #[test]
    fn epilogue_applies_relu_gate_and_residual_in_order() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 2]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w) = (normal([7, 5]), normal([5, 3]));
        let b = normal([1, 3]).reshape([3]);
        let (gate, residual) = (normal([7, 3]), normal([7, 3]));
        let plain = matmul_bias(x.clone(), w.clone(), Some(b.clone()));
        let cases = [
            (true, false, false),
            (false, true, true),
            (false, false, true),
            (true, true, true),
        ];
        for (relu, gated, added) in cases {
            let epilogue = Epilogue {
                relu,
                gate: gated.then(|| gate.clone()),
                residual: added.then(|| residual.clone()),
                ..Epilogue::default()
            };
            let ours = matmul_bias_with(x.clone(), w.clone(), Some(b.clone()), epilogue);
            let mut expected = plain.clone();
            if relu {
                expected = burn::tensor::activation::relu(expected);
            }
            if gated {
                expected = expected * burn::tensor::activation::sigmoid(gate.clone());
            }
            if added {
                expected = expected + residual.clone();
            }
            let diff: f32 = (ours - expected).abs().max().into_scalar();
            assert!(
                diff <= 1e-6,
                "relu {relu} gate {gated} residual {added}: {diff}"
            );
        }
    }

    #[test]
    fn input_gate_multiplies_the_input_before_the_product() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 2]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w, gates, residual) = (
            normal([7, 5]),
            normal([5, 3]),
            normal([7, 9]),
            normal([7, 3]),
        );
        let b = normal([1, 3]).reshape([3]);
        let gated = Epilogue {
            input_gate: Some((gates.clone(), 4)),
            residual: Some(residual.clone()),
            ..Epilogue::default()
        };
        let ours = matmul_bias_with(x.clone(), w.clone(), Some(b.clone()), gated);
        let gated_x = x * sigmoid(gates.narrow(1, 4, 5));
        let expected = matmul_bias(gated_x, w, Some(b)) + residual;
        let diff: f32 = (ours - expected).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "input gate");
    }

    #[test]
    fn epilogue_divides_column_blocks_and_repeats_a_short_bias() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 2]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // Three blocks of 2 columns: the bias [2] repeats, each row has one divisor a block.
        let (x, w, residual) = (normal([4, 5]), normal([5, 6]), normal([4, 6]));
        let b = normal([1, 2]).reshape([2]);
        let divisor = normal([4, 3]).abs() + 0.5;
        let finish = Epilogue {
            divisor: Some((divisor.clone(), 2)),
            residual: Some(residual.clone()),
            ..Epilogue::default()
        };
        let ours = matmul_bias_with(x.clone(), w.clone(), Some(b.clone()), finish);
        let repeated = Tensor::cat(vec![b.clone(), b.clone(), b], 0);
        let divisors: Vec<f32> = divisor.into_data().try_to_vec().unwrap();
        let expanded: Vec<f32> = (0..24)
            .map(|i| divisors[(i / 6) * 3 + (i % 6) / 2])
            .collect();
        let expanded = Tensor::<2>::from_data(TensorData::new(expanded, [4, 6]), &device);
        let expected = matmul_bias(x, w, Some(repeated)) / expanded + residual;
        let diff: f32 = (ours - expected).abs().max().into_scalar();
        // The bias added after the product instead of with it: f32 rounding only.
        assert!(diff <= 1e-5, "divided blocks differ by {diff}");
    }

    #[test]
    fn epilogue_scales_leading_columns() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 2]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w) = (normal([7, 5]), normal([5, 4]));
        let b = normal([1, 4]).reshape([4]);
        let scaled = Epilogue {
            scale_columns: Some((2, 0.25)),
            ..Epilogue::default()
        };
        let ours = matmul_bias_with(x.clone(), w.clone(), Some(b.clone()), scaled);
        let plain = matmul_bias(x, w, Some(b));
        let expected = Tensor::cat(
            vec![
                plain.clone().narrow(1, 0, 2).mul_scalar(0.25),
                plain.narrow(1, 2, 2),
            ],
            1,
        );
        let diff: f32 = (ours - expected).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "scaled columns");
    }
}
