//! Data parallel training over several machines (nodes): every node runs its local workers as
//! on one machine, then the nodes sum the step's gradients (and its logged values) through the
//! run's [`Exchange`] (node 0 adds them in rank order and sends the sum back), so every node
//! clips, steps and holds the same weights. Before the first step the nodes compare what they
//! were started with (a fingerprint of each part) and refuse to train when a part differs,
//! naming it and the nodes.
//!
//! The exchange is the project's own, over plain TCP: burn-collective 0.21's global all-reduce
//! can run once per registration only (its `SyncService::sync` clears a copy of its list of
//! synced peers, so a second sync never completes), and registering anew every step restarts
//! each node's data server, which a peer can reach before it listens (burn-communication then
//! panics and the orchestrator stops: seen at round 238 of the README's multinode command).

use std::sync::Mutex;
use std::time::Duration;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{AlignError, Result};
use crate::train::exchange::Exchange;
use crate::train::step::StepValues;

/// The `[distributed]` table: where this node stands among the run's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Nodes (processes, usually machines) training together; 1: this one alone.
    pub nodes: usize,
    /// This node's place, `0..nodes`. Node 0 sums the nodes' gradients and alone writes the
    /// checkpoints, the log and the exported model; node r logs to `log-node-r.jsonl`.
    pub rank: usize,
    /// Node 0's address, `HOST:PORT`: node 0 listens there, the others connect to it.
    pub main_address: String,
    /// Seconds to wait for the other nodes (at the start and at every step) before stopping
    /// with an error.
    pub node_timeout: f64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            nodes: 1,
            rank: 0,
            main_address: "127.0.0.1:29500".into(),
            node_timeout: 600.0,
        }
    }
}

/// Checks that `address` is `HOST:PORT` with a port number (it is resolved when the node joins).
fn check_address(address: &str) -> Result<()> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(AlignError::setting(
            "distributed.main_address",
            format!("{address:?} is not HOST:PORT with a port number"),
        )),
    }
}

impl NodeSettings {
    /// More than one node.
    pub fn is_distributed(&self) -> bool {
        self.nodes > 1
    }

    /// The default: this machine alone (a configuration file leaves the table out).
    pub fn is_single(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if self.nodes == 0 {
            return Err(AlignError::setting(
                "distributed.nodes",
                "must be at least 1",
            ));
        }
        if self.rank >= self.nodes {
            return Err(AlignError::setting(
                "distributed.rank",
                format!(
                    "{} is not below distributed.nodes ({})",
                    self.rank, self.nodes
                ),
            ));
        }
        if !(self.node_timeout > 0.0 && self.node_timeout.is_finite()) {
            return Err(AlignError::setting(
                "distributed.node_timeout",
                format!(
                    "must be a positive number of seconds, got {}",
                    self.node_timeout
                ),
            ));
        }
        if self.is_distributed() {
            check_address(&self.main_address)?;
        }
        Ok(())
    }

    /// Whether this node writes the run's files (checkpoints, configuration, export, summary):
    /// node 0, or a machine alone.
    pub fn writes_files(&self) -> bool {
        self.rank == 0
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.node_timeout)
    }

    /// The error that stops this node while it was doing `what`.
    fn stopped(&self, what: &str, why: String) -> AlignError {
        AlignError::Stopped(format!(
            "node {} of {}: {what}: {why}",
            self.rank, self.nodes
        ))
    }

    /// The log file of this node in a run directory.
    pub fn log_name(&self) -> String {
        match self.rank {
            0 => "log.jsonl".into(),
            r => format!("log-node-{r}.jsonl"),
        }
    }
}

/// This process's place in a multi-node run: sums vectors with the other nodes.
pub struct Nodes {
    settings: NodeSettings,
    exchange: Mutex<Exchange>,
}

impl Nodes {
    /// Joins the run's nodes: node 0 waits for every other node to connect, the others connect
    /// to it, for at most `node_timeout` seconds.
    pub fn join(settings: &NodeSettings) -> Result<Self> {
        settings.validate()?;
        let exchange = Exchange::join(
            settings.nodes,
            settings.rank,
            &settings.main_address,
            settings.timeout(),
        )
        .map_err(|e| settings.stopped("joining the other nodes", e))?;
        Ok(Self {
            settings: settings.clone(),
            exchange: Mutex::new(exchange),
        })
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The element-wise sum of `values` over all nodes (every node passes a vector of the same
    /// length), or an error when a node stopped or did not answer within the timeout.
    pub fn sum(&self, values: Vec<f32>, what: &str) -> Result<Vec<f32>> {
        self.exchange
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sum(values, self.settings.timeout())
            .map_err(|e| self.settings.stopped(what, e))
    }

    /// Checks that every node was started with the same parts: `parts` are (name, fingerprint)
    /// in the same order on every node. An error names each part that differs and the nodes
    /// that disagree. (That every rank is taken once, [`Exchange::join`] saw to.)
    pub fn agree(&self, parts: &[(&str, u64)]) -> Result<()> {
        let (nodes, rank) = (self.settings.nodes, self.settings.rank);
        // Per node a slot: each fingerprint in 16-bit pieces, exact in f32 and in their sum over
        // the nodes (slots of other nodes are 0 here).
        let width = 4 * parts.len();
        let mut slots = vec![0f32; nodes * width];
        let mine = &mut slots[rank * width..(rank + 1) * width];
        for (i, (_, print)) in parts.iter().enumerate() {
            for k in 0..4 {
                mine[4 * i + k] = ((print >> (16 * k)) & 0xffff) as f32;
            }
        }
        let all = self.sum(slots, "comparing the nodes' settings")?;
        let mut problems = Vec::new();
        for r in (0..nodes).filter(|&r| r != rank) {
            let slot = &all[r * width..(r + 1) * width];
            let print =
                |i: usize| (0..4).fold(0u64, |acc, k| acc | ((slot[4 * i + k] as u64) << (16 * k)));
            for (i, (name, own)) in parts.iter().enumerate() {
                if print(i) != *own {
                    problems.push(format!("node {r}'s {name} differs from node {rank}'s"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AlignError::Stopped(format!(
                "the nodes were not started alike: {} (every node needs the same model, data and \
                 settings but its distributed.rank)",
                problems.join("; ")
            )))
        }
    }
}

/// Appends every trained parameter's gradient to `out` in the module's order, each after a
/// flag (1: this node has it; a node whose shard of the step was empty has none), f32.
struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => {
                self.out.push(1.0);
                let g = decpo_model::precision::f32(g).into_data();
                self.out.extend(g.iter::<f32>());
            }
            None => {
                self.out.push(0.0);
                self.out
                    .resize(self.out.len() + value.shape().num_elements(), 0.0);
            }
        }
    }
}

/// The inverse of [`Flatten`] on the summed vector: registers each gradient some node had.
struct Unflatten<'a, B: Backend> {
    sum: &'a [f32],
    at: usize,
    grads: GradientsParams,
    device: B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let shape = value.shape();
        let n = shape.num_elements();
        let (flag, values) = (self.sum[self.at], &self.sum[self.at + 1..self.at + 1 + n]);
        self.at += 1 + n;
        if flag > 0.0 {
            let data = TensorData::new(values.to_vec(), shape);
            let g = Tensor::<B::InnerBackend, D>::from_data(data, &self.device).cast(value.dtype());
            self.grads.register(param.id, g);
        }
    }
}

/// The step's values as sums the nodes can add: pairs, tokens, pair-weighted means, fd.
fn values_vector(v: &StepValues) -> Vec<f32> {
    let mut v = v.clone();
    let w = v.pairs as f64;
    let has_pairs = (v.pairs > 0) as u8 as f32;
    let fd = v.fd.filter(|_| v.pairs > 0);
    let mut out = vec![v.pairs as f32, v.tokens as f32, has_pairs];
    out.push(fd.is_some() as u8 as f32);
    out.push(fd.map_or(0.0, |fd| (fd * w) as f32));
    out.extend(v.pair_means_mut().into_iter().map(|x| (*x * w) as f32));
    out
}

/// The values of the whole step from the nodes' summed [`values_vector`]s.
fn values_of(sum: &[f32]) -> StepValues {
    let mut v = StepValues {
        pairs: sum[0] as usize,
        tokens: sum[1] as usize,
        ..StepValues::default()
    };
    let w = f64::from(sum[0]).max(1.0);
    v.fd = (sum[3] == sum[2] && sum[0] > 0.0).then(|| f64::from(sum[4]) / w);
    for (x, s) in v.pair_means_mut().into_iter().zip(&sum[5..]) {
        *x = f64::from(*s) / w;
    }
    v
}

impl Nodes {
    /// This node's summed gradients and merged values of a step, summed over all nodes: every
    /// node gets the same gradients (the sum of every worker's) and the same values.
    pub fn sum_step<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: GradientsParams,
        values: &StepValues,
        step: usize,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) -> Result<(GradientsParams, StepValues)> {
        let mut flat = Flatten {
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut flat);
        let mut out = flat.out;
        let split = out.len();
        out.extend(values_vector(values));
        let sum = self.sum(out, &format!("summing step {step}'s gradients"))?;
        let mut back = Unflatten::<B::InnerBackend> {
            sum: &sum[..split],
            at: 0,
            grads: GradientsParams::new(),
            device: device.clone(),
        };
        model.visit(&mut back);
        Ok((back.grads, values_of(&sum[split..])))
    }
}

/// FNV-1a: a fingerprint of bytes, the same on every machine.
pub fn fingerprint(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_what_is_wrong() {
        let ok = NodeSettings {
            nodes: 2,
            rank: 1,
            ..NodeSettings::default()
        };
        assert!(ok.validate().is_ok());
        let bad = |s: NodeSettings, name: &str| {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        };
        bad(
            NodeSettings {
                rank: 2,
                ..ok.clone()
            },
            "distributed.rank",
        );
        bad(
            NodeSettings {
                nodes: 0,
                ..ok.clone()
            },
            "distributed.nodes",
        );
        bad(
            NodeSettings {
                main_address: "ws://10.0.0.2".into(),
                ..ok.clone()
            },
            "distributed.main_address",
        );
        bad(
            NodeSettings {
                node_timeout: 0.0,
                ..ok.clone()
            },
            "distributed.node_timeout",
        );
        assert!(check_address("node-0.cluster:29500").is_ok());
        assert_eq!(ok.log_name(), "log-node-1.jsonl");
    }
}
