//! The reference side of a run: the initial policy's log-probs computed once and cached beside
//! the run (`precomputed`), or a frozen copy of the policy (`frozen`).

use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use decpo_model::Llama;
use decpo_model::weights::save::write_file_atomically;

use crate::config::LossType;
use crate::error::{AlignError, Result, io_err};
use crate::train::data::{PairReference, PairSet, plan_eval};
use crate::train::session::{ReferenceMode, RunSpec};
use crate::train::step::pair_logps;

/// Gives every parameter a new id and no gradient: a frozen copy the optimizer never confuses
/// with the policy.
struct Freeze;

impl<B: Backend> ModuleMapper<B> for Freeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, _) = param.consume();
        Param::from_tensor(tensor.detach()).set_require_grad(false)
    }
}

/// Reference log-probs of every pair of `set` under `model`, in `micro_batch`-pair batches.
pub fn reference_logps<B: Backend>(
    model: &Llama<B>,
    set: &PairSet,
    micro_batch: usize,
    logits_chunk: usize,
    device: &B::Device,
) -> Vec<PairReference> {
    let mut out = Vec::with_capacity(set.pairs.len());
    for batch in plan_eval(set.pairs.len(), micro_batch) {
        let m = set.micro_batch::<B>(&batch[0], device);
        let l = pair_logps(model, &m.batch, logits_chunk);
        let v = |t: Tensor<B, 1>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32")
        };
        let (cs, rs) = (v(l.chosen.sum), v(l.rejected.sum));
        let (cm, rm) = (v(l.chosen.mean), v(l.rejected.mean));
        for i in 0..cs.len() {
            out.push(PairReference {
                chosen_sum: cs[i],
                rejected_sum: rs[i],
                chosen_mean: cm[i],
                rejected_mean: rm[i],
            });
        }
    }
    out
}

/// A short hash of the initial weights' identity and the token ids of both splits.
fn reference_key(model_key: &str, train: &PairSet, eval: &PairSet) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(model_key.as_bytes());
    for set in [train, eval] {
        h.update((set.pairs.len() as u64).to_le_bytes());
        for p in &set.pairs {
            for ids in [&p.prompt_ids, &p.chosen_ids, &p.rejected_ids] {
                h.update((ids.len() as u64).to_le_bytes());
                for id in ids.iter() {
                    h.update(id.to_le_bytes());
                }
            }
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the reference log-probs stored at `path` if they cover `n` pairs, else computes them
/// with `compute` and stores them atomically.
fn cached_reference(
    path: &Path,
    n: usize,
    compute: impl FnOnce() -> Vec<PairReference>,
) -> Result<Vec<PairReference>> {
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(v) = serde_json::from_str::<Vec<PairReference>>(&text)
        && v.len() == n
    {
        return Ok(v);
    }
    let v = compute();
    let text = serde_json::to_string(&v).expect("references serialise");
    write_file_atomically(path, text.as_bytes()).map_err(io_err(path))?;
    Ok(v)
}

/// The reference of a run: log-probs computed once and stored with the sets (`precomputed`),
/// a frozen copy of the policy (`frozen`, returned), or nothing for `lora-off` (the policy with
/// its adapters removed) and for losses without a reference.
pub(crate) fn prepare_reference<B: AutodiffBackend>(
    policy: &Llama<B>,
    train_set: &mut PairSet,
    eval_set: &mut PairSet,
    spec: &RunSpec,
) -> Result<Option<Llama<B>>> {
    let s = spec.train;
    let needs_reference = !matches!(spec.objective.loss, LossType::Simpo | LossType::Sft);
    match (needs_reference, s.reference) {
        (false, _) => Ok(None),
        (true, ReferenceMode::Precomputed) => {
            let initial = policy.valid();
            let inner_device = initial.embed_tokens.weight.device();
            let key = reference_key(spec.model_key, train_set, eval_set);
            for (name, set) in [("train", train_set), ("eval", eval_set)] {
                let path = spec.dir.join(format!("reference-{name}-{key}.json"));
                let n = set.pairs.len();
                let r = cached_reference(&path, n, || {
                    reference_logps(&initial, set, s.micro_batch, s.logits_chunk, &inner_device)
                })?;
                set.reference = Some(r);
            }
            Ok(None)
        }
        (true, ReferenceMode::Frozen) => {
            Ok(Some(policy.without_adapters().map(&mut Freeze).no_grad()))
        }
        (true, ReferenceMode::LoraOff) if spec.lora.is_none() => Err(AlignError::setting(
            "train.reference",
            "\"lora-off\" needs LoRA adapters ([lora])",
        )),
        (true, ReferenceMode::LoraOff) => Ok(None),
    }
}
