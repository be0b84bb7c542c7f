//! Mixed precision. The model computes in the device's default float type: f32, or bf16 after
//! [`set_compute_dtype`]. Embeddings, projections, norms' outputs, attention and the MLP then run
//! in that type. A few tensors stay f32 whatever it is, because bf16's 8-bit mantissa (about 2-3
//! significant digits) would damage them:
//!
//! - logits → log-softmax → token log-probs and their sums over a completion
//!   ([`crate::completion_logps`]): a sequence log-prob is a sum of tens to hundreds of terms, and
//!   DPO's rewards are differences of two such sums of nearly equal size;
//! - the preference losses, rewards and margins, the precomputed reference log-probs;
//! - the DecPO regularizer's rows and Gram matrix, and the FD/AV measures: `‖ẐẐᵀ − I‖²` sums
//!   n² squared cosines of up to d_ff-term dot products;
//! - the trained parameters, with their gradients and AdamW moments: an update of `lr · m/√v`
//!   (~1e-4 of the weight) is below bf16's resolution and is rounded away. LoRA adapters are
//!   always f32; in full fine-tuning [`Llama::with_f32_master`] keeps every weight in f32 and each
//!   use casts it to the activations' type (as PyTorch's autocast does). Measured on the
//!   embedded default job (full fine-tuning, `flex` backend, README "Mixed precision"): held-out
//!   margin 2.91 in f32, 1.92 with bf16 weights, 2.87 with f32 master weights;
//! - RMSNorm's mean of squares.

use burn::module::{ModuleMapper, Param};
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType, Int, IntDType, Tensor};

use crate::error::{ModelError, Result};

/// The floating-point type the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("dtype {other:?} is not f32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Makes `precision` the default float type of every tensor created on `device` from now on:
/// weights loaded after this call are stored in it. Call it once, before the first tensor is
/// made on the device (burn fixes a device's default at its first tensor).
pub fn set_compute_dtype<B: Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    let unsupported = || ModelError::Config {
        origin: format!("--dtype {precision}"),
        message: format!(
            "the {} backend cannot compute in {precision} on {device:?}; bf16 needs the cuda, \
             wgpu or flex backend",
            B::name(device)
        ),
    };
    if !B::supports_dtype(device, DType::from(precision.dtype())) {
        return Err(unsupported());
    }
    let int = IntDType::from(<B::IntElem as Element>::dtype());
    burn::tensor::set_default_dtypes::<B>(device, precision.dtype(), int).map_err(|e| {
        ModelError::Config {
            origin: format!("--dtype {precision}"),
            message: format!("{e:?} (set the dtype before any tensor is created)"),
        }
    })
}

/// `t` in f32 (a no-op when it already is).
pub fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(FloatDType::F32)
}

/// A 0/1 integer mask as an f32 tensor.
pub fn f32_mask<B: Backend, const D: usize>(mask: Tensor<B, D, Int>) -> Tensor<B, D> {
    mask.float().cast(FloatDType::F32)
}

/// The type activations are computed in on `device`: its default float type.
pub fn compute_dtype<B: Backend>(device: &B::Device) -> FloatDType {
    burn::tensor::get_device_settings::<B>(device).float_dtype
}

/// A weight in the type of the activation `x` it meets (a no-op when it already is); the
/// gradient flows back through the cast into the weight's own type.
pub fn weight_for<B: Backend, const D: usize, const E: usize>(
    w: Tensor<B, D>,
    x: &Tensor<B, E>,
) -> Tensor<B, D> {
    w.cast(x.dtype())
}

/// RMSNorm as burn's `RmsNorm` computes it (`x / rms(x) · γ`, the mean of squares in f32), with
/// γ cast to `x`'s type.
pub fn rms_norm<B: Backend>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let rms = (f32(x.clone()).square().mean_dim(2) + norm.epsilon).sqrt();
    let gamma = weight_for(norm.gamma.val(), &x);
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

/// Casts every parameter to f32, keeping its id and whether it trains.
pub(crate) struct ToF32;

impl<B: Backend> ModuleMapper<B> for ToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let trains = t.is_require_grad();
            let t = f32(t).detach();
            if trains { t.require_grad() } else { t }
        })
    }
}
