//! Half precision: the trunk (extra-MSA stack and Evoformer) in f16; the embeddings (the template
//! pair stack included), structure module and heads in f32, as AlphaFold's own `bfloat16` mode
//! keeps the structure module in f32.

use std::str::FromStr;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, FloatDType, Tensor};

use crate::model::AlphaFold;

/// Float precision of the trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32: the reference.
    #[default]
    F32,
    /// Template pair stack, extra-MSA stack and Evoformer in f16 (LayerNorm statistics and
    /// softmax masks stay safe; see `af2_layers::softmax_mask`).
    F16,
}

impl Precision {
    /// The dtype the trunk computes in.
    pub fn trunk_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "half" | "float16" => Ok(Self::F16),
            other => Err(format!("unknown precision `{other}`: expected f32 or f16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

/// Casts every float parameter of a module.
struct CastFloats(FloatDType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `module` with every float parameter cast to `dtype`.
pub fn cast_module<M: Module>(module: M, dtype: FloatDType) -> M {
    module.map(&mut CastFloats(dtype))
}

/// Records the dtype of the first float parameter visited.
struct FirstFloatDType(Option<DType>);

impl ModuleVisitor for FirstFloatDType {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.0.is_none() {
            self.0 = Some(param.val().dtype());
        }
    }
}

/// The dtype of a module's float parameters (f32 for a module without any).
pub fn module_dtype<M: Module>(module: &M) -> FloatDType {
    let mut visitor = FirstFloatDType(None);
    module.visit(&mut visitor);
    visitor.0.map_or(FloatDType::F32, FloatDType::from)
}

impl AlphaFold {
    /// This model with its extra-MSA stack and Evoformer in `precision`. The forward pass
    /// casts activations to the stacks' dtype on the way in and back to f32 after the
    /// Evoformer.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let dtype = precision.trunk_dtype();
        self.extra_msa_stack = cast_module(self.extra_msa_stack, dtype);
        self.evoformer = cast_module(self.evoformer, dtype);
        // A recording reads the parameters' old buffers: a round trip back to the old dtype
        // would otherwise match it.
        self.forget_recordings();
        self
    }

    /// The precision of the trunk.
    pub fn precision(&self) -> Precision {
        match module_dtype(&self.evoformer) {
            FloatDType::F16 => Precision::F16,
            _ => Precision::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!("f16".parse::<Precision>(), Ok(Precision::F16));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::F32));
        assert!("bf16".parse::<Precision>().is_err());
    }

    #[test]
    fn casts_every_float_parameter() {
        // flex is the CPU backend with f16 (ndarray has none).
        let device = burn::tensor::Device::flex();
        let layer = af2_layers::linear(3, 2, &device);
        let half = cast_module(layer, FloatDType::F16);
        assert_eq!(half.weight.val().dtype(), burn::tensor::DType::F16);
        let bias = half.bias.as_ref().expect("bias").val();
        assert_eq!(bias.dtype(), burn::tensor::DType::F16);
    }
}
