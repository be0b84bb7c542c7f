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
use crate::train::data::{PairReference, PairSet, StepPlan};
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

/// Reference log-probs of the pairs `indices` of `set` under `model`, in batches of
/// `micro_batch` pairs of similar length (least padding), as `(index, log-probs)`.
pub fn reference_logps<B: Backend>(
    model: &Llama<B>,
    set: &PairSet,
    indices: &[usize],
    micro_batch: usize,
    logits_chunk: usize,
    device: &B::Device,
) -> Vec<(usize, PairReference)> {
    let mut order = indices.to_vec();
    order.sort_by_key(|&i| (set.pairs[i].max_len(), i));
    let mut out = Vec::with_capacity(order.len());
    for batch in order.chunks(micro_batch.max(1)) {
        let m = set.micro_batch::<B>(batch, device);
        let l = pair_logps(model, &m.batch, logits_chunk);
        let v = |t: Tensor<B, 1>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32")
        };
        let (cs, rs) = (v(l.chosen.sum), v(l.rejected.sum));
        let (cm, rm) = (v(l.chosen.mean), v(l.rejected.mean));
        for (k, &i) in batch.iter().enumerate() {
            let r = PairReference {
                chosen_sum: cs[k],
                rejected_sum: rs[k],
                chosen_mean: cm[k],
                rejected_mean: rm[k],
            };
            out.push((i, r));
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

/// The reference log-probs of the `n` pairs of a set, where `needed` are the pairs that must
/// have them: those stored at `path` are read, the missing ones computed with `compute` and the
/// file rewritten atomically. Pairs no step uses are never computed (`null` in the file).
fn cached_reference(
    path: &Path,
    n: usize,
    needed: &[usize],
    compute: impl FnOnce(&[usize]) -> Vec<(usize, PairReference)>,
) -> Result<Vec<Option<PairReference>>> {
    let stored = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Vec<Option<PairReference>>>(&text).ok())
        .filter(|v| v.len() == n);
    let mut v = stored.unwrap_or_else(|| vec![None; n]);
    let missing: Vec<usize> = needed.iter().copied().filter(|&i| v[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(v);
    }
    for (i, r) in compute(&missing) {
        v[i] = Some(r);
    }
    let text = serde_json::to_string(&v).expect("references serialise");
    write_file_atomically(path, text.as_bytes()).map_err(io_err(path))?;
    Ok(v)
}

/// The reference of a run: log-probs computed once and stored with the sets (`precomputed`; of
/// the training pairs only those `plan` uses), a frozen copy of the policy (`frozen`, returned),
/// or nothing for `lora-off` (the policy with its adapters removed) and for losses without a
/// reference.
pub(crate) fn prepare_reference<B: AutodiffBackend>(
    policy: &Llama<B>,
    train_set: &mut PairSet,
    eval_set: &mut PairSet,
    plan: &StepPlan,
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
            let used = plan_pairs(plan, train_set.pairs.len());
            let every: Vec<usize> = (0..eval_set.pairs.len()).collect();
            for (name, set, needed) in [("train", train_set, used), ("eval", eval_set, every)] {
                let path = spec.dir.join(format!("reference-{name}-{key}.json"));
                let n = set.pairs.len();
                let r = cached_reference(&path, n, &needed, |missing| {
                    let (batch, chunk) = (s.micro_batch, s.logits_chunk);
                    reference_logps(&initial, set, missing, batch, chunk, &inner_device)
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

/// The pairs a plan uses, each once, in index order.
fn plan_pairs(plan: &StepPlan, n_pairs: usize) -> Vec<usize> {
    let mut used = vec![false; n_pairs];
    for &i in plan.iter().flatten().flatten() {
        used[i] = true;
    }
    (0..n_pairs).filter(|&i| used[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: f32) -> PairReference {
        PairReference {
            chosen_sum: x,
            rejected_sum: -x,
            chosen_mean: x / 2.0,
            rejected_mean: -x / 2.0,
        }
    }

    #[test]
    fn the_plan_pairs_are_each_pair_a_step_uses_once() {
        let plan: StepPlan = vec![vec![vec![4, 1]], vec![vec![1, 6], vec![0]]];
        assert_eq!(plan_pairs(&plan, 8), vec![0, 1, 4, 6]);
    }

    #[test]
    fn only_missing_references_are_computed_and_the_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference-train.json");
        let asked = std::cell::RefCell::new(Vec::new());
        let compute = |missing: &[usize]| {
            asked.borrow_mut().push(missing.to_vec());
            missing.iter().map(|&i| (i, r(i as f32))).collect()
        };
        // A short run: pairs 1 and 3 of 5.
        let v = cached_reference(&path, 5, &[1, 3], compute).unwrap();
        assert_eq!(v, vec![None, Some(r(1.0)), None, Some(r(3.0)), None]);
        // The same run again reads the file.
        let again = cached_reference(&path, 5, &[3, 1], compute).unwrap();
        assert_eq!(again, v);
        // A longer run computes only what the file lacks.
        let longer = cached_reference(&path, 5, &[0, 1, 3, 4], compute).unwrap();
        assert_eq!(longer[0], Some(r(0.0)));
        assert_eq!(longer[4], Some(r(4.0)));
        assert_eq!(longer[2], None);
        assert_eq!(*asked.borrow(), vec![vec![1, 3], vec![0, 4]]);
        // A file written for another number of pairs is not trusted.
        cached_reference(&path, 6, &[5], compute).unwrap();
        assert_eq!(asked.borrow().last().unwrap(), &vec![5]);
    }

    #[test]
    fn a_file_of_the_earlier_dense_format_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference-eval.json");
        let dense = vec![r(1.0), r(2.0)];
        std::fs::write(&path, serde_json::to_string(&dense).unwrap()).unwrap();
        let v = cached_reference(&path, 2, &[0, 1], |_| panic!("nothing to compute")).unwrap();
        assert_eq!(v, vec![Some(r(1.0)), Some(r(2.0))]);
    }
}
