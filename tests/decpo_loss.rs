//! The DPO-family losses and the DecPO regularizer against an independent PyTorch implementation
//! (scripts/make_loss_fixture.py): loss, rewards and parameter gradients for every loss type and
//! regularizer mode on the tiny Llama. Also: the regularizer's gradient reaches `dec_layer`'s
//! up_proj and the layers below it, and nothing above it.

mod common;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use common::*;
use decpo_alignment::loss::preference::PairLogps;
use decpo_alignment::{ObjectiveConfig, RegMode, Regularizer, Site, objective};
use decpo_model::{Llama, load_pretrained};
use serde_json::Value;

fn vec1<A: AutodiffBackend>(v: &Value) -> Tensor<A, 1> {
    let data = floats(v);
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), &Default::default())
}

/// Gradient of a parameter by its Hugging Face name, in PyTorch layout.
fn grad<A: AutodiffBackend>(model: &Llama<A>, grads: &A::Gradients, name: &str) -> Vec<f32> {
    if name == "model.embed_tokens.weight" {
        return to_vec(model.embed_tokens.weight.grad(grads).unwrap());
    }
    let rest = name.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let l = &model.layers[layer.parse::<usize>().unwrap()];
    let linear = match part {
        "mlp.up_proj.weight" => &l.mlp.up_proj.base,
        "mlp.gate_proj.weight" => &l.mlp.gate_proj.base,
        "mlp.down_proj.weight" => &l.mlp.down_proj.base,
        "self_attn.q_proj.weight" => &l.self_attn.q_proj.base,
        other => panic!("no gradient accessor for {other}"),
    };
    // burn keeps projections [in, out].
    to_vec(linear.weight.grad(grads).unwrap().transpose())
}

struct Run {
    loss: f32,
    loss_pref: f32,
    loss_reg: f32,
    rewards_chosen: Vec<f32>,
    rewards_rejected: Vec<f32>,
    grads: Vec<(String, Vec<f32>)>,
}

/// With `frozen_unembedding` the output weight (the LM head, or the tied embedding) takes no
/// gradient, as under LoRA; the other parameters' gradients are the same as with it trained.
fn run<A: AutodiffBackend>(
    golden: &Value,
    config: &ObjectiveConfig,
    grad_names: &[String],
    frozen_unembedding: bool,
) -> Run {
    let mut model = load_pretrained::<A>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    if frozen_unembedding {
        match model.lm_head.as_mut() {
            Some(head) => head.weight = head.weight.clone().set_require_grad(false),
            None => model.embed_tokens.weight = model.embed_tokens.weight.set_require_grad(false),
        }
    }
    let batch = fixture_batch::<A>(golden);
    let reference = PairLogps::from_rows(
        vec1(&golden["reference_logps"]["sum"]),
        vec1(&golden["reference_logps"]["mean"]),
    );
    let out = objective(&model, &batch, &reference, config, 5);
    let scalar = |t: Tensor<A, 1>| to_vec(t.inner())[0];
    let grads = out.loss.clone().backward();
    Run {
        loss: scalar(out.loss),
        loss_pref: scalar(out.loss_pref),
        loss_reg: scalar(out.loss_reg),
        rewards_chosen: to_vec(out.rewards_chosen.inner()),
        rewards_rejected: to_vec(out.rewards_rejected.inner()),
        grads: grad_names
            .iter()
            .map(|n| (n.clone(), grad(&model, &grads, n)))
            .collect(),
    }
}

#[test]
fn every_loss_and_regularizer_matches_pytorch() {
    every_case_matches_pytorch::<AD>(false);
}

/// burn-flex, the binaries' CPU backend, computes the log-probs in its own fused pass
/// (`decpo_model::fused`): the same fixture, values and gradients.
#[test]
fn every_loss_and_regularizer_matches_pytorch_on_flex() {
    every_case_matches_pytorch::<burn::backend::Autodiff<burn::backend::Flex>>(false);
}

/// With the unembedding frozen (LoRA), burn-flex's fused pass forms d hidden in the forward
/// instead of keeping the logits: the other parameters' gradients are still PyTorch's.
#[test]
fn with_the_unembedding_frozen_flex_gradients_match_pytorch() {
    every_case_matches_pytorch::<burn::backend::Autodiff<burn::backend::Flex>>(true);
}

fn every_case_matches_pytorch<A: AutodiffBackend>(frozen_unembedding: bool) {
    let golden = read_json("decpo-loss-golden.json");
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        // (The tiny model's LM head is its own weight, so the embedding's gradient stays.)
        let names: Vec<String> = case["grads"].as_object().unwrap().keys().cloned().collect();
        let r = run::<A>(&golden, &objective_config(case), &names, frozen_unembedding);
        let close = |got: f32, key: &str| {
            let want = case[key].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
                "{name}: {key} {got} vs {want}"
            );
        };
        close(r.loss, "loss");
        close(r.loss_pref, "loss_pref");
        close(r.loss_reg, "loss_reg");
        assert_close_each(
            &r.rewards_chosen,
            &floats(&case["rewards_chosen"]),
            1e-4,
            &format!("{name}: rewards_chosen"),
        );
        assert_close_each(
            &r.rewards_rejected,
            &floats(&case["rewards_rejected"]),
            1e-4,
            &format!("{name}: rewards_rejected"),
        );
        for (param, got) in &r.grads {
            let want = floats(&case["grads"][param]);
            let e = rel_err(got, &want);
            assert!(e < 1e-3, "{name}: gradient of {param}: relative error {e}");
        }
    }
}

#[test]
fn the_regularizer_gradient_reaches_dec_layer_and_below_only() {
    let golden = read_json("decpo-loss-golden.json");
    let names: Vec<String> = [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
    ]
    .map(String::from)
    .to_vec();
    let with = |regularizer| ObjectiveConfig {
        regularizer: Some(regularizer),
        ..ObjectiveConfig::default()
    };
    let layer = 1;
    let at = |mode, site| Regularizer {
        lambda: 0.5,
        site,
        ..Regularizer::new(mode, layer)
    };
    let mut regs: Vec<Regularizer> = [
        Site::PromptLast,
        Site::CompletionMean,
        Site::CompletionLast,
        Site::Eos,
    ]
    .map(|site| at(RegMode::Paper, site))
    .to_vec();
    regs.push(at(RegMode::Released, Site::Eos));
    for reg in regs {
        // λ = 0: no regularizer gradient, and the same layout of the forward (the released mode
        // does not share prompts), so the same float order.
        let plain = with(Regularizer { lambda: 0.0, ..reg });
        let base = run::<AD>(&golden, &plain, &names, false);
        let reg_run = run::<AD>(&golden, &with(reg), &names, false);
        for ((name, a), (_, b)) in base.grads.iter().zip(&reg_run.grads) {
            let changed = a != b;
            let expected =
                name.starts_with("model.layers.0.") || name == "model.layers.1.mlp.up_proj.weight";
            assert_eq!(
                changed, expected,
                "{reg:?}: gradient of {name} changed = {changed}"
            );
        }
    }
}
