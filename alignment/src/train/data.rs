//! The data of a run as burn data loaders: the pairs (tokenized once), the order of every
//! optimizer step fixed up front from the seed, and optional precomputed reference log-probs.
//! Step `s` always gets the same pairs, so a resumed run sees exactly the data it would have seen.

use std::ops::Range;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use decpo_datasets::batch::{BatchIds, PreferenceBatch, epoch_batches};
use decpo_datasets::first_distinct;
use decpo_datasets::tokenize::TokenizedPair;

use crate::loss::preference::{PairLogps, SideLogps};
use crate::train::step::{MicroBatch, StepInput};

/// Reference log-probs of one pair: summed and mean, chosen and rejected.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairReference {
    pub chosen_sum: f32,
    pub rejected_sum: f32,
    pub chosen_mean: f32,
    pub rejected_mean: f32,
}

/// Tokenized pairs with their padding and EOS ids and, when precomputed, reference log-probs
/// (of the pairs that training or evaluation uses; `None` for the others).
#[derive(Debug, Clone)]
pub struct PairSet {
    pub pairs: Vec<TokenizedPair>,
    pub ids: BatchIds,
    pub reference: Option<Vec<Option<PairReference>>>,
}

impl PairSet {
    /// The first `n` distinct non-empty prompts, as token ids (what FD/AV are measured on).
    pub fn prompts(&self, n: usize) -> Vec<Vec<u32>> {
        first_distinct(&self.pairs, n, TokenizedPair::prompt_key)
            .into_iter()
            .map(|i| self.pairs[i].prompt_ids.clone())
            .collect()
    }

    /// The micro-batch of the pairs `indices`.
    pub fn micro_batch<B: Backend>(&self, indices: &[usize], device: &B::Device) -> MicroBatch<B> {
        let pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &self.pairs[i]).collect();
        let batch = PreferenceBatch::new(&pairs, self.ids);
        let tokens = batch.attention_mask.iter().filter(|&&m| m == 1).count();
        let reference = self.reference.as_ref().map(|r| {
            let col = |f: fn(&PairReference) -> f32| {
                let v: Vec<f32> = indices
                    .iter()
                    .map(|&i| {
                        f(r[i]
                            .as_ref()
                            .expect("precomputed for every pair of the plan"))
                    })
                    .collect();
                Tensor::<B, 1>::from_data(TensorData::new(v, [indices.len()]), (device, DType::F32))
            };
            PairLogps {
                chosen: SideLogps {
                    sum: col(|p| p.chosen_sum),
                    mean: col(|p| p.chosen_mean),
                },
                rejected: SideLogps {
                    sum: col(|p| p.rejected_sum),
                    mean: col(|p| p.rejected_mean),
                },
            }
        });
        MicroBatch {
            batch: batch.to_tensors(device),
            reference,
            pairs: indices.len(),
            tokens,
        }
    }
}

/// For every optimizer step, its micro-batches as pair indices.
pub type StepPlan = Vec<Vec<Vec<usize>>>;

/// `epochs` passes over `n_pairs` pairs: each epoch a seeded, length-grouped order cut into
/// micro-batches of `micro_batch` pairs, `accumulation` micro-batches per step (the last step of
/// an epoch may have fewer), at most `max_steps` steps. Epoch `e` uses seed `seed + e`.
pub fn plan_steps(
    lengths: &[usize],
    micro_batch: usize,
    accumulation: usize,
    epochs: usize,
    seed: u64,
    max_steps: usize,
) -> StepPlan {
    let mut steps = Vec::new();
    for e in 0..epochs {
        if steps.len() >= max_steps || lengths.is_empty() {
            break;
        }
        let batches = epoch_batches(lengths, micro_batch, seed.wrapping_add(e as u64), true);
        steps.extend(batches.chunks(accumulation.max(1)).map(<[_]>::to_vec));
    }
    steps.truncate(max_steps);
    steps
}

/// Eval split: consecutive micro-batches, one per "step", in file order.
pub fn plan_eval(n_pairs: usize, micro_batch: usize) -> StepPlan {
    let idx: Vec<usize> = (0..n_pairs).collect();
    idx.chunks(micro_batch.max(1))
        .map(|c| vec![c.to_vec()])
        .collect()
}

/// A burn data loader over a range of a [`StepPlan`]: one item per optimizer step. A loader can
/// be one of `shards` shards of the plan, for data parallelism: shard `i` of a step is its
/// micro-batches `i`, `i + shards`, ... (possibly none), so every shard yields one item per step
/// and the shards of a step together are the step.
#[derive(Clone)]
pub struct StepLoader<B: Backend> {
    data: Arc<PairSet>,
    plan: Arc<StepPlan>,
    range: Range<usize>,
    device: B::Device,
    shard: usize,
    shards: usize,
}

impl<B: Backend> StepLoader<B> {
    pub fn new(data: Arc<PairSet>, plan: Arc<StepPlan>, device: B::Device) -> Self {
        let range = 0..plan.len();
        Self {
            data,
            plan,
            range,
            device,
            shard: 0,
            shards: 1,
        }
    }

    /// One loader per device: shard `first + i` of `all` shards of every step on `devices[i]`
    /// (`first` 0 and `all` the number of devices on one machine; on several nodes, the
    /// numbers of this node's workers among all nodes' workers).
    pub fn shards(
        &self,
        devices: &[B::Device],
        first: usize,
        all: usize,
    ) -> Vec<Arc<dyn DataLoader<B, StepInput<B>>>> {
        devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                Arc::new(Self {
                    device: device.clone(),
                    shard: first + i,
                    shards: all,
                    ..self.clone()
                }) as Arc<dyn DataLoader<B, StepInput<B>>>
            })
            .collect()
    }
}

struct StepIter<'a, B: Backend> {
    loader: &'a StepLoader<B>,
    next: usize,
}

impl<B: Backend> Iterator for StepIter<'_, B> {
    type Item = StepInput<B>;

    fn next(&mut self) -> Option<StepInput<B>> {
        let step = self.loader.range.start + self.next;
        if step >= self.loader.range.end {
            return None;
        }
        self.next += 1;
        let l = self.loader;
        let all = &l.plan[step];
        let micro = all
            .iter()
            .skip(l.shard)
            .step_by(l.shards)
            .map(|idx| l.data.micro_batch(idx, &l.device))
            .collect();
        Some(StepInput {
            micro,
            step_micro: all.len(),
        })
    }
}

impl<B: Backend> DataLoaderIterator<StepInput<B>> for StepIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.next, self.loader.range.len())
    }
}

impl<B: Backend> DataLoader<B, StepInput<B>> for StepLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepInput<B>> + 'a> {
        Box::new(StepIter {
            loader: self,
            next: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.range.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, StepInput<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, StepInput<B>>> {
        let s = (self.range.start + start).min(self.range.end);
        let e = (self.range.start + end).min(self.range.end);
        Arc::new(Self {
            range: s..e,
            ..self.clone()
        })
    }
}
