//! The Llama decoder: embedding, blocks, final norm, unembedding.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::module::linear;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, backend::Backend};

use crate::attention::stack_mask;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::decoder::LlamaDecoderLayer;
use crate::linear::Projection;
use crate::logprobs::CompletionBatch;
use crate::lora::LoraConfig;
use crate::precision::{ToF32, compute_dtype, rms_norm, weight_for};
use crate::rope::{RopeTables, RotaryEmbedding};
use crate::shared_prompt::SharedPrompts;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<LlamaDecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when the unembedding is tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    rope: RotaryEmbedding,
}

/// Output of the training forward pass.
#[derive(Debug, Clone)]
pub struct LlamaOutput<B: Backend> {
    /// Final hidden states after the last norm, `[batch, seq, hidden]`.
    pub hidden: Tensor<B, 3>,
    /// `mlp.up_proj` outputs `[batch, seq, d_ff]`, one per requested layer, in request order.
    pub up_proj: Vec<Tensor<B, 3>>,
}

impl LlamaConfig {
    /// A randomly initialised model of this shape.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let lm_head = (!self.tie_word_embeddings).then(|| {
            LinearConfig::new(self.hidden_size, self.vocab_size)
                .with_bias(false)
                .init(device)
        });
        Llama::from_parts(
            self.clone(),
            EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            (0..self.num_hidden_layers)
                .map(|_| LlamaDecoderLayer::init(self, device))
                .collect(),
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .init(device),
            lm_head,
        )
    }
}

impl LlamaConfig {
    /// A model of this shape with its weights drawn on the host from `seed` (rand's `StdRng`, in
    /// the module's order), so a seed means the same numbers on every backend and whatever else
    /// draws from the backend's generator meanwhile. The distributions are burn's defaults for
    /// each kind of layer: embeddings N(0, 1), linear weights U(±1/√fan_in), norm weights 1.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Llama<B> {
        self.init::<B>(device).map(&mut SeededInit {
            rng: StdRng::seed_from_u64(seed),
            containers: Vec::new(),
            dtype: compute_dtype::<B>(device),
        })
    }
}

impl<B: Backend> Llama<B> {
    /// Assembles a model from its parts (used by the weight loaders).
    pub fn from_parts(
        config: LlamaConfig,
        embed_tokens: Embedding<B>,
        layers: Vec<LlamaDecoderLayer<B>>,
        norm: RmsNorm<B>,
        lm_head: Option<Linear<B>>,
    ) -> Self {
        Self {
            rope: RotaryEmbedding::new(&config),
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
        }
    }

    /// Training forward over a right-padded batch, no cache.
    ///
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, 1 for real tokens and 0 for padding
    /// - `capture`: layers whose `mlp.up_proj` output to return
    ///
    /// Every sequence must start with a real token (right padding), so that no query row is fully
    /// masked. Panics if a `capture` index is not a layer.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        capture: &[usize],
    ) -> LlamaOutput<B> {
        let (x, up_proj) = self.run_layers(input_ids, attention_mask, capture, self.layers.len());
        LlamaOutput {
            hidden: rms_norm(&self.norm, x),
            up_proj,
        }
    }

    /// The `mlp.up_proj` output of `layer` alone, `[batch, seq, d_ff]`: [`Llama::forward`] stopped
    /// after that layer (what the regularizer's gradient depends on). Panics if `layer` is not a
    /// layer.
    pub fn up_proj_of(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let (_, mut up) = self.run_layers(input_ids, attention_mask, &[layer], layer + 1);
        up.remove(0)
    }

    /// [`Llama::forward`] of a preference batch (rows `0..B` chosen, `B..2B` rejected), each
    /// pair's shared prompt run once (see [`SharedPrompts`]): the same outputs at every real token
    /// up to float rounding, fewer token columns. At padding positions the outputs copy the row's
    /// last real token. Runs `forward` when sharing saves nothing.
    pub fn forward_pairs(&self, batch: &CompletionBatch<B>, capture: &[usize]) -> LlamaOutput<B> {
        let Some(shared) = SharedPrompts::plan(batch) else {
            return self.forward(
                batch.input_ids.clone(),
                batch.attention_mask.clone(),
                capture,
            );
        };
        let device = batch.input_ids.device();
        let (x, up_proj) = self.run_shared(&shared, &device, capture, self.layers.len());
        LlamaOutput {
            hidden: shared.unpack(rms_norm(&self.norm, x)),
            up_proj: up_proj.into_iter().map(|u| shared.unpack(u)).collect(),
        }
    }

    /// [`Llama::up_proj_of`] through [`Llama::forward_pairs`]'s layout.
    pub fn up_proj_of_pairs(&self, batch: &CompletionBatch<B>, layer: usize) -> Tensor<B, 3> {
        let Some(shared) = SharedPrompts::plan(batch) else {
            return self.up_proj_of(batch.input_ids.clone(), batch.attention_mask.clone(), layer);
        };
        let device = batch.input_ids.device();
        let (_, mut up) = self.run_shared(&shared, &device, &[layer], layer + 1);
        shared.unpack(up.remove(0))
    }

    /// The first `n` layers over packed pairs.
    fn run_shared(
        &self,
        shared: &SharedPrompts,
        device: &B::Device,
        capture: &[usize],
        n: usize,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let ids = shared.input_ids(device);
        let rows = ids.dims()[0];
        let rope = self.rope_tables(&shared.positions, rows, device);
        let mask = self.stack_mask(shared.forbidden(device));
        self.run_layers_with(ids, &rope, &mask, capture, n)
    }

    /// The first `n` layers over a right-padded batch: their output and the captured `up_proj`s.
    fn run_layers(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        capture: &[usize],
        n: usize,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions: Vec<usize> = (0..seq).collect();
        let rope = self.rope_tables(&positions, 1, &device);
        let causal = Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &device)
            .unsqueeze::<4>()
            .expand([batch, 1, seq, seq]);
        let padding = attention_mask
            .equal_elem(0)
            .reshape([batch, 1, 1, seq])
            .expand([batch, 1, seq, seq]);
        let mask = self.stack_mask(causal.bool_or(padding));
        self.run_layers_with(input_ids, &rope, &mask, capture, n)
    }

    /// The first `n` layers with the given RoPE tables and stacked attention mask.
    fn run_layers_with(
        &self,
        input_ids: Tensor<B, 2, Int>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        capture: &[usize],
        n: usize,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let n_layers = self.layers.len();
        if let Some(bad) = capture.iter().find(|&&l| l >= n.min(n_layers)) {
            panic!("capture layer {bad} out of range: the model has {n_layers} layers");
        }
        let mut x = self.embed(input_ids);
        let mut captured: Vec<Option<Tensor<B, 3>>> = vec![None; capture.len()];
        for (i, layer) in self.layers.iter().take(n).enumerate() {
            let (out, up) = layer.forward(x, rope, mask, None);
            x = out;
            for (slot, _) in captured.iter_mut().zip(capture).filter(|(_, l)| **l == i) {
                *slot = Some(up.clone());
            }
        }
        (x, captured.into_iter().flatten().collect())
    }

    /// Token embeddings in the device's compute type (the table may be kept in f32: see
    /// [`Llama::with_f32_master`]).
    fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let device = input_ids.device();
        self.embed_tokens
            .forward(input_ids)
            .cast(compute_dtype::<B>(&device))
    }

    /// Unembedding: `[batch, seq, hidden]` -> logits `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => linear(hidden.clone(), weight_for(head.weight.val(), &hidden), None),
            None => {
                let [batch, seq, width] = hidden.dims();
                let flat = hidden.reshape([batch * seq, width]);
                let embed = weight_for(self.embed_tokens.weight.val(), &flat);
                let in_place =
                    flat.dtype() == DType::F32 && B::name(&flat.device()).contains("flex");
                let logits = if in_place {
                    // burn-flex's f32 GEMM reads a transposed view as it is: `hidden @ embed^T`
                    // gives the logits row-major, with no copy of either.
                    flat.matmul(embed.transpose())
                } else {
                    // Elsewhere (ndarray; flex in bf16) a transposed operand is copied first:
                    // `embed @ hidden^T` keeps the big one contiguous; the logits are copied.
                    embed.matmul(flat.transpose()).transpose()
                };
                logits.reshape([batch, seq, self.config.vocab_size])
            }
        }
    }

    /// The output weight `[hidden, vocab]` in `like`'s type: the LM head's, or the tied
    /// embedding's transposed (a view).
    pub fn unembedding(&self, like: &Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => weight_for(head.weight.val(), like),
            None => weight_for(self.embed_tokens.weight.val(), like).transpose(),
        }
    }

    /// Incremental forward for generation: runs `input_ids` `[batch, new]` after the cached
    /// columns and returns the logits of the last new column, `[batch, vocab]`. A padded batch
    /// (see [`KvCache`]) passes its padding columns like tokens.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [batch, new] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.len();
        let width = past + new;
        // Padding columns (see KvCache) do not count as positions, as transformers numbers a
        // padded row. (Attention scores under RoPE depend only on position differences, so this
        // keeps the angles, not the results, the same as alone.) A query sees the real columns
        // up to itself; a padding query sees itself alone, so that no row of the softmax is empty.
        let mut positions = Vec::with_capacity(batch * new);
        let mut forbidden = Vec::with_capacity(batch * new * width);
        for row in 0..batch {
            for q in past..width {
                positions.push(cache.position(row, q));
                forbidden.extend((0..width).map(|k| k > q || (k != q && cache.is_padding(row, k))));
            }
        }
        let rope = self.rope_tables(&positions, batch, &device);
        let mask = self.stack_mask(Tensor::<B, 4, Bool>::from_data(
            TensorData::new(forbidden, [batch, 1, new, width]),
            &device,
        ));
        let mut x = self.embed(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &rope, &mask, Some((cache, i))).0;
        }
        cache.advance(new);
        let last = rms_norm(&self.norm, x.narrow(1, new - 1, 1));
        self.logits(last).reshape([batch, self.config.vocab_size])
    }

    /// `mask` `[batch, 1, seq, kv_len]` as every layer's attention reads it (see [`stack_mask`]).
    fn stack_mask(&self, mask: Tensor<B, 4, Bool>) -> Tensor<B, 4, Bool> {
        let c = &self.config;
        let groups = c.num_attention_heads / c.num_key_value_heads;
        stack_mask(mask, c.num_key_value_heads, groups)
    }

    /// RoPE's tables for `rows` rows of `positions.len() / rows` positions each.
    fn rope_tables(&self, positions: &[usize], rows: usize, device: &B::Device) -> RopeTables<B> {
        let c = &self.config;
        self.rope.tables(
            positions,
            rows,
            c.num_attention_heads,
            c.num_key_value_heads,
            device,
        )
    }

    /// An empty cache with room for `capacity` columns before it grows.
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache::new(self.layers.len(), capacity)
    }

    /// Freezes every weight and adds fresh adapters where `c` says: only the adapters train. Their
    /// `lora_A` are drawn on the host from `seed` (layer by layer, projection by projection), so
    /// a seed gives the same adapters on every backend, whenever they are first used.
    pub fn with_lora(self, c: &LoraConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
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
                    *proj = p.with_adapter(c, &mut rng);
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

    /// Every weight stored in f32 (master weights) while activations stay in the device's
    /// compute type: for full fine-tuning in bf16. A no-op in f32.
    pub fn with_f32_master(self) -> Self {
        self.map(&mut ToF32)
    }
}

/// Draws every float parameter anew from a host generator, by the kind of module that holds it
/// (see [`LlamaConfig::init_seeded`]); the lazy initializers never run.
struct SeededInit {
    rng: StdRng,
    /// The container types entered, innermost last (`Struct:Linear`, ...).
    containers: Vec<String>,
    dtype: burn::tensor::FloatDType,
}

impl SeededInit {
    fn draw(&mut self, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        match self.containers.last().map(String::as_str) {
            Some("Struct:RmsNorm") => vec![1.0; n],
            Some("Struct:Embedding") => (0..n)
                .map(|_| {
                    // Box-Muller: a standard normal from two uniforms.
                    let (u, v): (f64, f64) = (self.rng.random(), self.rng.random());
                    ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect(),
            _ => {
                let bound = 1.0 / (shape[0] as f64).sqrt();
                (0..n)
                    .map(|_| self.rng.random_range(-bound..bound) as f32)
                    .collect()
            }
        }
    }
}

impl<B: Backend> burn::module::ModuleMapper<B> for SeededInit {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let shape = param.lazy_shape();
        let device = param.lazy_device();
        let values = self.draw(shape.as_slice());
        let data = burn::tensor::TensorData::new(values, shape);
        let value = Tensor::<B, D>::from_data(data, &device).cast(self.dtype);
        burn::module::Param::initialized(param.id, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor, Param};

    type B = burn::backend::NdArray<f32>;

    /// Every float parameter's values, in visiting order.
    struct Values(Vec<Vec<f32>>);

    impl ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.val().into_data().to_vec().unwrap());
        }
    }

    fn values(m: &Llama<B>) -> Vec<Vec<f32>> {
        let mut v = Values(Vec::new());
        m.visit(&mut v);
        v.0
    }

    #[test]
    fn a_seeded_model_draws_burns_distributions_from_its_seed_alone() {
        let _rng = crate::rng_lock();
        let c = LlamaConfig::preset("tiny").unwrap();
        let a = c.init_seeded::<B>(3, &Default::default());
        // Drawing from the backend's generator in between changes nothing.
        B::seed(&Default::default(), 99);
        let _ = Tensor::<B, 1>::random(
            [7],
            burn::tensor::Distribution::Default,
            &Default::default(),
        );
        let b = c.init_seeded::<B>(3, &Default::default());
        assert_eq!(values(&a), values(&b));
        assert_ne!(
            values(&a),
            values(&c.init_seeded::<B>(4, &Default::default()))
        );

        let embed: Vec<f32> = a.embed_tokens.weight.val().into_data().to_vec().unwrap();
        let n = embed.len() as f32;
        let mean = embed.iter().sum::<f32>() / n;
        let var = embed.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "N(0, 1)? mean {mean}, var {var}"
        );
        let norm: Vec<f32> = a.norm.gamma.val().into_data().to_vec().unwrap();
        assert!(norm.iter().all(|&x| x == 1.0));
        let q = &a.layers[0].self_attn.q_proj.base.weight;
        let [fan_in, _] = q.val().dims();
        let bound = 1.0 / (fan_in as f32).sqrt();
        let q: Vec<f32> = q.val().into_data().to_vec().unwrap();
        assert!(q.iter().all(|x| x.abs() < bound));
        assert!(
            q.iter().any(|x| x.abs() > 0.9 * bound),
            "U(±1/√fan_in) reaches its bound"
        );
    }
}
