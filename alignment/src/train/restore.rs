//! Resuming from a checkpoint: the model, optimizer and schedule of checkpoint interval `k`.
//!
//! burn's record loading makes every float tensor the device's default type, which in a bf16
//! run is bf16, while the run trains f32 tensors (master weights, LoRA adapters) with f32 Adam
//! moments. So each parameter gets back the type the freshly built model gave it, and each pair of
//! moments the type of its parameter: a resumed bf16 run continues the run that was interrupted.

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamW, AdamWState, Optimizer};
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use crate::error::{AlignError, Result};
use crate::train::checkpoint::AtomicRecorder;
use crate::train::schedule::WarmupSchedule;
use crate::train::step::DecpoModel;

/// The optimizer of a run.
pub type Adam<B> = OptimizerAdaptor<AdamW, DecpoModel<B>, B>;

/// The float parameters' types, in visiting order.
struct Types(Vec<DType>);

impl<B: Backend> ModuleVisitor<B> for Types {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dtype());
    }
}

/// Casts the float parameters, in visiting order, to the given types.
struct Retype {
    types: std::vec::IntoIter<DType>,
}

impl<B: Backend> ModuleMapper<B> for Retype {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(dtype) = self.types.next() else {
            return param;
        };
        param.map(|t| {
            if t.dtype() == dtype {
                return t;
            }
            let trains = t.is_require_grad();
            let t = t.cast(dtype).detach();
            if trains { t.require_grad() } else { t }
        })
    }
}

/// Casts each parameter's Adam moments to the parameter's type.
struct RetypeMoments<'a, B: AutodiffBackend> {
    records: &'a mut <Adam<B> as Optimizer<DecpoModel<B>, B>>::Record,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for RetypeMoments<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(record) = self.records.remove(&param.id) else {
            return;
        };
        let dtype = param.val().dtype();
        let mut state: AdamWState<B::InnerBackend, D> = record.into_state();
        let m = &mut state.momentum;
        m.moment_1 = m.moment_1.clone().cast(dtype);
        m.moment_2 = m.moment_2.clone().cast(dtype);
        m.max_moment_2 = m.max_moment_2.take().map(|t| t.cast(dtype));
        self.records
            .insert(param.id, AdaptorRecord::from_state(state));
    }
}

/// Loads checkpoint interval `k` from `dir` (as burn-train's file checkpointer names its files)
/// into `model`, `optim` and `schedule`, on `device`.
pub fn restore<B: AutodiffBackend>(
    dir: &Path,
    k: usize,
    model: DecpoModel<B>,
    optim: Adam<B>,
    schedule: WarmupSchedule,
    device: &B::Device,
) -> Result<(DecpoModel<B>, Adam<B>, WarmupSchedule)> {
    let recorder = AtomicRecorder::default();
    let file = |part: &str| dir.join(format!("{part}-{k}"));
    let failed = |part: &str, e: burn::record::RecorderError| AlignError::File {
        path: file(part).with_extension("mpk"),
        message: e.to_string(),
    };
    let mut types = Types(Vec::new());
    model.visit(&mut types);
    let record =
        Recorder::<B>::load(&recorder, file("model"), device).map_err(|e| failed("model", e))?;
    let model = model.load_record(record).map(&mut Retype {
        types: types.0.into_iter(),
    });
    let mut records =
        Recorder::<B>::load(&recorder, file("optim"), device).map_err(|e| failed("optim", e))?;
    model.visit(&mut RetypeMoments::<B> {
        records: &mut records,
    });
    let optim = optim.load_record(records);
    let record = Recorder::<B>::load(&recorder, file("scheduler"), device)
        .map_err(|e| failed("scheduler", e))?;
    let schedule = LrScheduler::load_record::<B>(schedule, record);
    Ok((model, optim, schedule))
}
