//! Data parallel training over several machines (nodes) with burn-collective: every node runs
//! its local workers as on one machine, then the nodes sum the step's gradients (and its
//! logged values) with one all-reduce through burn-collective's global phase (the orchestrator,
//! hosted by node 0, and a websocket data service on every node), so every node clips, steps
//! and holds the same weights.
//!
//! burn-collective 0.21 has no timeouts, and a second all-reduce inside one registration never
//! returned here; so each exchange is one round (register, all-reduce, finish) on a thread of
//! its own, and the training thread waits for it at most `node_timeout` seconds: a node that
//! died or never connected stops the others with an error instead of a hang. Before the first
//! step the nodes compare what they were started with (a fingerprint of each part) and refuse
//! to train when a part differs, naming it and the nodes.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective, register,
    start_global_orchestrator,
};
use serde::{Deserialize, Serialize};

use crate::error::{AlignError, Result};
use crate::train::step::StepValues;

/// The `[distributed]` table: where this node stands among the run's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Nodes (processes, usually machines) training together; 1: this one alone.
    pub nodes: usize,
    /// This node's place, `0..nodes`. Node 0 hosts the orchestrator and alone writes the
    /// checkpoints, the log and the exported model; node r logs to `log-node-r.jsonl`.
    pub rank: usize,
    /// The orchestrator's address, `ws://HOST:PORT` (node 0 listens on PORT).
    pub orchestrator: String,
    /// This node's address for the other nodes' data, `ws://HOST:PORT` (it listens on PORT).
    pub node_address: String,
    /// Seconds to wait for the other nodes (at the start and at every step) before stopping
    /// with an error.
    pub node_timeout: f64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            nodes: 1,
            rank: 0,
            orchestrator: "ws://127.0.0.1:3000".into(),
            node_address: "ws://127.0.0.1:3001".into(),
            node_timeout: 600.0,
        }
    }
}

/// The port of a `ws://HOST:PORT` address.
fn port_of(address: &str, setting: &str) -> Result<u16> {
    let bad = || {
        AlignError::setting(
            setting,
            format!("{address:?} is not ws://HOST:PORT with a port number"),
        )
    };
    let rest = address.strip_prefix("ws://").ok_or_else(bad)?;
    let (_, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    port.trim_end_matches('/').parse().map_err(|_| bad())
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
            port_of(&self.orchestrator, "distributed.orchestrator")?;
            port_of(&self.node_address, "distributed.node_address")?;
        }
        Ok(())
    }

    /// Whether this node writes the run's files (checkpoints, configuration, export, summary):
    /// node 0, or a machine alone.
    pub fn writes_files(&self) -> bool {
        self.rank == 0
    }

    /// The log file of this node in a run directory.
    pub fn log_name(&self) -> String {
        match self.rank {
            0 => "log.jsonl".into(),
            r => format!("log-node-{r}.jsonl"),
        }
    }
}

/// How long a node waits after registering before it exchanges (see [`round`]).
const SERVER_START: Duration = Duration::from_millis(50);

/// One exchange asked of the collective thread: the values to sum, and where the sum goes.
type Request = (Vec<f32>, Sender<std::result::Result<Vec<f32>, String>>);

/// This process's place in a multi-node run: sums vectors with the other nodes.
pub struct Nodes {
    settings: NodeSettings,
    requests: Mutex<Sender<Request>>,
}

/// The orchestrator runs once per process, on node 0, for as long as the process lives.
static ORCHESTRATOR: OnceLock<()> = OnceLock::new();

impl Nodes {
    /// Joins the run's nodes with backend `B`'s tensors on `device` (B is the inner backend of
    /// an autodiff one). Node 0 starts the orchestrator. Nothing is sent until the first
    /// [`Nodes::sum`].
    pub fn join<B: Backend>(settings: &NodeSettings, device: &B::Device) -> Result<Self> {
        settings.validate()?;
        if settings.rank == 0 {
            let port = port_of(&settings.orchestrator, "distributed.orchestrator")?;
            ORCHESTRATOR.get_or_init(|| {
                std::thread::spawn(move || {
                    match tokio::runtime::Runtime::new() {
                        Ok(runtime) => runtime.block_on(start_global_orchestrator(port)),
                        Err(e) => eprintln!("no runtime for the orchestrator: {e}"),
                    }
                    // It returns when the process is interrupted (it takes Ctrl-C over, so the
                    // signal no longer ends the process) or when it cannot listen: either way
                    // no node can go on. Checkpoints are written atomically.
                    eprintln!(
                        "node 0: burn-collective's orchestrator on port {port} stopped \
                         (interrupted, or the port is taken); stopping"
                    );
                    std::process::exit(130);
                });
            });
        }
        let parse = |address: &str| {
            address
                .parse()
                .map_err(|e| AlignError::setting("distributed", format!("{address:?}: {e}")))
        };
        let config = CollectiveConfig::default()
            .with_num_nodes(settings.nodes as u32)
            .with_global_address(parse(&settings.orchestrator)?)
            .with_node_address(parse(&settings.node_address)?)
            .with_data_service_port(port_of(&settings.node_address, "distributed.node_address")?);
        let (requests, receive) = channel::<Request>();
        let (peer, device) = (PeerId::from(settings.rank), device.clone());
        std::thread::Builder::new()
            .name(format!("decpo-node-{}", settings.rank))
            .spawn(move || serve::<B>(receive, peer, device, config))
            .map_err(|e| AlignError::Stopped(format!("cannot start the collective thread: {e}")))?;
        Ok(Self {
            settings: settings.clone(),
            requests: Mutex::new(requests),
        })
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The element-wise sum of `values` over all nodes (every node passes a vector of the same
    /// length), or an error when the other nodes do not answer within the timeout.
    pub fn sum(&self, values: Vec<f32>, what: &str) -> Result<Vec<f32>> {
        let n = values.len();
        let (reply, answer) = channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((values, reply));
        let timeout = Duration::from_secs_f64(self.settings.node_timeout);
        let got = match sent {
            Ok(()) => answer.recv_timeout(timeout),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        };
        let stop = |why: String| {
            AlignError::Stopped(format!(
                "node {} of {}: {what}: {why}",
                self.settings.rank, self.settings.nodes
            ))
        };
        match got {
            Ok(Ok(sum)) if sum.len() == n => Ok(sum),
            Ok(Ok(sum)) => Err(stop(format!(
                "the nodes sent vectors of different lengths ({} here, {} summed)",
                n,
                sum.len()
            ))),
            Ok(Err(e)) => Err(stop(format!("burn-collective failed: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(stop(format!(
                "no answer from the other nodes within {} s (distributed.node_timeout): a node \
                 stopped, never started or was refused (see its messages), or cannot reach {} \
                 or this node's {}",
                self.settings.node_timeout, self.settings.orchestrator, self.settings.node_address
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(stop("the collective thread stopped".into()))
            }
        }
    }

    /// Checks that every node was started with the same parts: `parts` are (name, fingerprint)
    /// in the same order on every node. An error names each part that differs and the nodes
    /// that disagree, or a rank that no node or two nodes took.
    pub fn agree(&self, parts: &[(&str, u64)]) -> Result<()> {
        let (nodes, rank) = (self.settings.nodes, self.settings.rank);
        // Per node a slot: a 1 (the slot is taken) and each fingerprint in 16-bit pieces, exact
        // in f32 and in their sum over the nodes (slots of other nodes are 0 here).
        let width = 1 + 4 * parts.len();
        let mut slots = vec![0f32; nodes * width];
        let mine = &mut slots[rank * width..(rank + 1) * width];
        mine[0] = 1.0;
        for (i, (_, print)) in parts.iter().enumerate() {
            for k in 0..4 {
                mine[1 + 4 * i + k] = ((print >> (16 * k)) & 0xffff) as f32;
            }
        }
        let all = self.sum(slots, "comparing the nodes' settings")?;
        let mut problems = Vec::new();
        for r in 0..nodes {
            let slot = &all[r * width..(r + 1) * width];
            if slot[0] != 1.0 {
                problems.push(format!(
                    "{} node started with distributed.rank {r}",
                    if slot[0] == 0.0 {
                        "no"
                    } else {
                        "more than one"
                    }
                ));
                continue;
            }
            let print = |i: usize| {
                (0..4).fold(0u64, |acc, k| {
                    acc | ((slot[1 + 4 * i + k] as u64) << (16 * k))
                })
            };
            for (i, (name, own)) in parts.iter().enumerate() {
                if r != rank && print(i) != *own {
                    problems.push(format!("node {r}'s {name} differs from node {rank}'s"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AlignError::Stopped(format!(
                "the nodes were not started alike: {} (every node needs the same model, data and \
                 settings but its distributed.rank and distributed.node_address)",
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

/// The collective thread: one burn-collective round per request.
fn serve<B: Backend>(
    requests: Receiver<Request>,
    peer: PeerId,
    device: B::Device,
    config: CollectiveConfig,
) {
    for (values, reply) in requests {
        let _ = reply.send(round::<B>(values, peer, &device, &config));
    }
}

fn round<B: Backend>(
    values: Vec<f32>,
    peer: PeerId,
    device: &B::Device,
    config: &CollectiveConfig,
) -> std::result::Result<Vec<f32>, String> {
    register::<B>(peer, device.clone(), config.clone()).map_err(|e| {
        let e = format!("{e:?}");
        if e.contains("RegisterParamsMismatch") {
            format!(
                "the orchestrator refused this node: its distributed.nodes differs from that of \
                 the nodes that registered first ({e})"
            )
        } else {
            format!("register: {e}")
        }
    })?;
    // Each registration starts this node's data server anew, and a peer that downloads from it
    // the moment the registrations are complete can find it not yet listening (seen once in
    // about 240 rounds: burn-communication panics, the orchestrator stops). A pause before the
    // exchange makes that unlikely; it does not make it impossible.
    std::thread::sleep(SERVER_START);
    let n = values.len();
    let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
    let sum = all_reduce::<B>(peer, tensor.into_primitive().tensor(), ReduceOperation::Sum)
        .map_err(|e| format!("all-reduce: {e:?}"))?;
    finish_collective::<B>(peer).map_err(|e| format!("finish: {e:?}"))?;
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(sum))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("reading the sum: {e:?}"))
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
                orchestrator: "127.0.0.1:3000".into(),
                ..ok.clone()
            },
            "distributed.orchestrator",
        );
        bad(
            NodeSettings {
                node_timeout: 0.0,
                ..ok.clone()
            },
            "distributed.node_timeout",
        );
        assert_eq!(port_of("ws://10.0.0.2:3101", "x").unwrap(), 3101);
        assert_eq!(ok.log_name(), "log-node-1.jsonl");
    }
}
