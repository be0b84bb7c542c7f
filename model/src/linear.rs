//! The model's linear layer: a bias-free projection `y = x·W` with an optional LoRA adapter
//! (`+ (α/r)·dropout(x)·A·B`, see [`crate::lora`]).

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData, backend::Backend};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, RngCore, SeedableRng};

use crate::fused;
use crate::lora::LoraConfig;
use crate::precision::{f32, weight_for};

/// The low-rank update of one projection. Its weights are f32 whatever the model computes in
/// (see [`crate::precision`]): they are what training updates.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[d_in, r]`, the PEFT `lora_A` transposed.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, d_out]`, the PEFT `lora_B` transposed.
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: Dropout,
}

impl<B: Backend> LoraAdapter<B> {
    /// PEFT's default: kaiming-uniform A (a = √5, i.e. bound 1/√fan_in), zero B. A is drawn here,
    /// on the host from `rng`, not lazily from the backend's generator: a lazy draw would take
    /// whatever state that generator has when the weights are first touched, so the adapters
    /// would depend on what ran before (a calibration, a precomputed reference) and on the backend.
    pub fn init(
        d_in: usize,
        d_out: usize,
        c: &LoraConfig,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..d_in * c.rank)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::<B, 2>::from_data(TensorData::new(a, [d_in, c.rank]), device);
        Self {
            lora_a: Param::from_tensor(f32(a)),
            lora_b: f32_param(Initializer::Zeros, [c.rank, d_out], device),
            scale: c.alpha / c.rank as f64,
            dropout: DropoutConfig::new(c.dropout).init(),
        }
    }

    /// `scale · A·B`, `[d_in, d_out]` in f32: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }

    /// `scale · dropout(x)·A·B`, computed in f32 and returned in `x`'s type.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let [batch, seq, _] = x.dims();
        let low = fused::matmul(f32(rows(dropout(&self.dropout, x))), self.lora_a.val());
        let out = fused::matmul(low, self.lora_b.val()) * self.scale;
        out.cast(dtype).reshape([batch, seq, self.lora_b.dims()[1]])
    }
}

/// The adapter's input dropout, active only under autodiff (training), as burn's [`Dropout`]. On
/// the CPU backends the mask is drawn on the host by a small fast generator (xoshiro) seeded with
/// one draw from the backend's generator, so `B::seed` still decides it: burn's dropout draws
/// each element through a sampler made for it (the SmolLM2 + LoRA bench took 0.93x the time
/// with the host-drawn masks).
/// Elsewhere (wgpu, cuda) the device draws it, as burn's dropout does.
fn dropout<B: Backend>(d: &Dropout, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let device = x.device();
    if !B::ad_enabled(&device) || d.prob == 0.0 {
        return x;
    }
    let name = B::name(&device);
    if !(name.contains("flex") || name.contains("ndarray")) {
        return d.forward(x);
    }
    let seed = Tensor::<B, 1>::random([1], Distribution::Uniform(0.0, 1.0), &device)
        .into_scalar()
        .elem::<f64>();
    let mut rng = SmallRng::seed_from_u64((seed * u32::MAX as f64) as u64);
    let keep = 1.0 - d.prob;
    // Kept when a uniform u32 falls below keep · 2^32; kept values are scaled by 1 / keep.
    let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = (1.0 / keep) as f32;
    let n = x.shape().num_elements();
    let mut mask = vec![0.0f32; n];
    for pair in mask.chunks_mut(2) {
        let bits = rng.next_u64();
        for (m, half) in pair.iter_mut().zip([bits as u32, (bits >> 32) as u32]) {
            if half < threshold {
                *m = scale;
            }
        }
    }
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [n]), &device)
        .cast(x.dtype())
        .reshape(x.dims());
    x * mask
}

/// A parameter drawn from `init` and stored in f32, lazily as burn's own initializers do (the
/// values are drawn at first use, from the backend RNG as it is then).
/// `[batch, seq, d]` -> `[batch * seq, d]`: one matrix product over every position. A 3-D input
/// would be multiplied batch row by batch row, each product reading the whole weight again: at
/// one position per row (generation) that was a matrix-vector product per row.
fn rows<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, d] = x.dims();
    x.reshape([batch * seq, d])
}

fn f32_param<B: Backend>(
    init: Initializer,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let value = f32(init.init::<B, 2, _>(shape, device).val()).detach();
            if require_grad {
                value.require_grad()
            } else {
                value
            }
        },
        device.clone(),
        true,
        shape.into(),
    )
}

/// A bias-free projection with an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub base: Linear<B>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Projection<B> {
    pub fn new(base: Linear<B>) -> Self {
        Self { base, lora: None }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let weight = weight_for(self.base.weight.val(), &x);
        let width = weight.dims()[1];
        let y = fused::matmul(rows(x.clone()), weight).reshape([batch, seq, width]);
        match &self.lora {
            None => y,
            Some(a) => y + a.forward(x),
        }
    }

    /// The weight `[d_in, d_out]` with the adapter (if any) folded in.
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        let w = self.base.weight.val();
        match &self.lora {
            None => w,
            Some(a) => {
                let dtype = w.dtype();
                (f32(w) + a.delta()).cast(dtype)
            }
        }
    }

    pub(crate) fn with_adapter(self, c: &LoraConfig, rng: &mut StdRng) -> Self {
        let [d_in, d_out] = self.base.weight.dims();
        let device = self.base.weight.device();
        Self {
            lora: Some(LoraAdapter::init(d_in, d_out, c, rng, &device)),
            base: self.base.no_grad(),
        }
    }

    pub(crate) fn without_adapter(&self) -> Self {
        Self {
            base: self.base.clone(),
            lora: None,
        }
    }

    pub(crate) fn merged(&self) -> Self {
        let mut base = self.base.clone();
        base.weight = Param::from_tensor(self.merged_weight().detach());
        Self { base, lora: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type AD = Autodiff<NdArray<f32>>;

    fn draw(seed: u64) -> Vec<f32> {
        let device = Default::default();
        AD::seed(&device, seed);
        let x = Tensor::<AD, 3>::ones([2, 500, 100], &device);
        dropout(&DropoutConfig::new(0.05).init(), x)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn host_dropout_keeps_95_percent_scaled_and_follows_the_backend_seed() {
        let _rng = crate::rng_lock();
        let a = draw(7);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        // 100 000 draws: the standard deviation of the kept fraction is 0.0007.
        assert!((kept - 0.95).abs() < 0.004, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || v == (1.0 / 0.95f64) as f32));
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
    }

    #[test]
    fn no_dropout_outside_autodiff() {
        let device = Default::default();
        let x = Tensor::<NdArray<f32>, 3>::ones([1, 10, 10], &device);
        let y = dropout(&DropoutConfig::new(0.5).init(), x);
        assert!(y.into_data().iter::<f32>().all(|v| v == 1.0));
    }
}
