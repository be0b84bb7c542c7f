//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_`: when the L2 norm of all
//! gradients together exceeds `max`, every gradient is scaled by `max / (norm + 1e-6)`.
//! (burn's own `GradientClipping::Norm` clips each tensor on its own.)

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            // f32 even for bf16 gradients: a sum over millions of squares.
            let sq = decpo_model::precision::f32(g).powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

struct SplitNorms<'a, B: AutodiffBackend> {
    total: &'a GradientsParams,
    dec: &'a GradientsParams,
    lambda: f64,
    pref: Option<Tensor<B::InnerBackend, 1>>,
    dec_sq: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = self.total.get::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let g = decpo_model::precision::f32(g);
        let add = |acc: &mut Option<Tensor<B::InnerBackend, 1>>, sq: Tensor<B::InnerBackend, 1>| {
            *acc = Some(match acc.take() {
                Some(t) => t + sq,
                None => sq,
            });
        };
        let pref = match self.dec.get::<B::InnerBackend, D>(param.id) {
            Some(d) => {
                let d = decpo_model::precision::f32(d) * self.lambda;
                add(&mut self.dec_sq, d.clone().powi_scalar(2).sum());
                g - d
            }
            None => g,
        };
        add(&mut self.pref, pref.powi_scalar(2).sum());
    }
}

/// The global L2 norms of the two parts of `total` = ∇L_pref + λ·∇L_reg, given `dec` = ∇L_reg:
/// (‖total − λ·dec‖, ‖λ·dec‖).
pub fn split_norms<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    total: &GradientsParams,
    dec: &GradientsParams,
    lambda: f64,
) -> (f64, f64) {
    let mut v = SplitNorms::<B> {
        total,
        dec,
        lambda,
        pref: None,
        dec_sq: None,
    };
    module.visit(&mut v);
    let norm = |t: Option<Tensor<B::InnerBackend, 1>>| {
        t.map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt())
    };
    (norm(v.pref), norm(v.dec_sq))
}

/// The global L2 norm of `grads` over `module`'s parameters (0 when there are none).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut v);
    v.total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// Scales every gradient by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut Scale { grads, factor });
}

/// Clips `grads` to global norm `max` (if given); returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max: Option<f64>,
) -> f64 {
    let norm = global_norm(module, grads);
    if let Some(max) = max
        && norm.is_finite()
        && norm > max
    {
        scale_grads(module, grads, max / (norm + 1e-6));
    }
    norm
}
