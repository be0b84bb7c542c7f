//! LoRA (Hu et al. 2021): a projection `y = x·W` becomes `y = x·W + (α/r)·dropout(x)·A·B`, with
//! `A: [d_in, r]` random, `B: [r, d_out]` zero (so a fresh adapter changes nothing) and `W` frozen.
//!
//! Every projection of the model is a [`Projection`]: the base [`Linear`] plus an optional
//! adapter. The reference model of LoRA training is the same policy with the adapters removed
//! ([`Llama::without_adapters`]): no second copy of the weights.

use std::ops::Range;

use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::module::linear;
use burn::tensor::{Tensor, backend::Backend};

use crate::llama::Llama;
use crate::precision::{f32, weight_for};

/// Which projections of which layers get adapters, and their shape.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    #[config(default = 8)]
    pub rank: usize,
    /// Scale numerator α (the update is scaled by α/r).
    #[config(default = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[config(default = 0.05)]
    pub dropout: f64,
    /// Hugging Face names of the adapted projections.
    #[config(default = "vec![\"q_proj\".into(), \"v_proj\".into(), \"up_proj\".into()]")]
    pub targets: Vec<String>,
    /// First adapted layer (inclusive).
    #[config(default = 0)]
    pub first_layer: usize,
    /// Last adapted layer (exclusive); `None` = through the last layer.
    #[config(default = "None")]
    pub end_layer: Option<usize>,
}

/// The projections a LoRA target may name.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LoraConfig {
    pub fn validate(&self, n_layers: usize) -> Result<(), String> {
        if self.rank == 0 {
            return Err("lora rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "lora dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !PROJECTIONS.contains(&t.as_str()))
        {
            return Err(format!(
                "lora target {t:?} is not one of {}",
                PROJECTIONS.join(", ")
            ));
        }
        if self.targets.is_empty() {
            return Err("lora targets are empty".into());
        }
        let layers = self.layers(n_layers);
        if layers.is_empty() || layers.end > n_layers {
            return Err(format!(
                "lora layers {}..{} are not a non-empty range of the {n_layers} layers",
                self.first_layer,
                self.end_layer.unwrap_or(n_layers)
            ));
        }
        Ok(())
    }

    pub fn layers(&self, n_layers: usize) -> Range<usize> {
        self.first_layer..self.end_layer.unwrap_or(n_layers)
    }
}

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
    pub fn init(d_in: usize, d_out: usize, c: &LoraConfig, device: &B::Device) -> Self {
        // PEFT's default: kaiming-uniform A (a = √5, i.e. bound 1/√fan_in), zero B.
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            lora_a: f32_param(
                Initializer::Uniform {
                    min: -bound,
                    max: bound,
                },
                [d_in, c.rank],
                device,
            ),
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
        let low = f32(self.dropout.forward(x)).matmul(self.lora_a.val().unsqueeze());
        (low.matmul(self.lora_b.val().unsqueeze()) * self.scale).cast(dtype)
    }
}

/// A parameter drawn from `init` and stored in f32, lazily as burn's own initializers do (the
/// values are drawn at first use, from the backend RNG as it is then).
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
        let y = linear(x.clone(), weight_for(self.base.weight.val(), &x), None);
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

    fn with_adapter(self, c: &LoraConfig) -> Self {
        let [d_in, d_out] = self.base.weight.dims();
        let device = self.base.weight.device();
        Self {
            lora: Some(LoraAdapter::init(d_in, d_out, c, &device)),
            base: self.base.no_grad(),
        }
    }

    fn without_adapter(&self) -> Self {
        Self {
            base: self.base.clone(),
            lora: None,
        }
    }

    fn merged(&self) -> Self {
        let mut base = self.base.clone();
        base.weight = Param::from_tensor(self.merged_weight().detach());
        Self { base, lora: None }
    }
}

impl<B: Backend> Llama<B> {
    /// Freezes every weight and adds fresh adapters where `c` says: only the adapters train.
    pub fn with_lora(self, c: &LoraConfig) -> Self {
        let layers = c.layers(self.config.num_hidden_layers);
        let wants = |name: &str| c.targets.iter().any(|t| t == name);
        let mut model = self.no_grad();
        for (i, layer) in model.layers.iter_mut().enumerate() {
            if !layers.contains(&i) {
                continue;
            }
            for (name, proj) in layer.projections_mut() {
                if wants(name) {
                    let p = std::mem::replace(proj, Projection::new(proj.base.clone()));
                    *proj = p.with_adapter(c);
                }
            }
        }
        model
    }

    /// The same model without its adapters (weights shared, not copied): LoRA's reference model.
    pub fn without_adapters(&self) -> Self {
        self.map_projections(Projection::without_adapter)
    }

    /// Adapters folded into the base weights, for export.
    pub fn merge_lora(&self) -> Self {
        self.map_projections(Projection::merged)
    }

    /// Whether any projection carries an adapter.
    pub fn has_adapters(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.projections().iter().any(|(_, p)| p.lora.is_some()))
    }

    fn map_projections(&self, f: impl Fn(&Projection<B>) -> Projection<B>) -> Self {
        let mut model = self.clone();
        for layer in model.layers.iter_mut() {
            for (_, proj) in layer.projections_mut() {
                *proj = f(proj);
            }
        }
        model
    }
}
