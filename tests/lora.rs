//! LoRA: a fresh adapter changes nothing, merging equals the adapter forward, removing adapters
//! gives the base back, only adapters receive gradients, and the PEFT export has PEFT's layout.

mod common;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use common::{AD, B, FLOAT_ORDER};
use decpo_model::{Llama, LlamaConfig, LoraConfig, save_lora_adapters};

fn ids<Bk: Backend>() -> Tensor<Bk, 2, Int> {
    Tensor::<Bk, 2>::random(
        [2, 7],
        Distribution::Uniform(0.0, 250.0),
        &Default::default(),
    )
    .int()
}

fn logits<Bk: Backend>(m: &Llama<Bk>, ids: Tensor<Bk, 2, Int>) -> Vec<f32> {
    let mask = ids.ones_like();
    let out = m.forward(ids, mask, &[]);
    m.logits(out.hidden).into_data().to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Randomises every lora_b so adapters change the output.
fn perturb(m: Llama<B>) -> Llama<B> {
    let mut m = m;
    for layer in m.layers.iter_mut() {
        for (_, p) in layer.projections_mut() {
            if let Some(a) = &mut p.lora {
                let dims = a.lora_b.dims();
                a.lora_b = Param::from_tensor(Tensor::random(
                    dims,
                    Distribution::Normal(0.0, 0.5),
                    &Default::default(),
                ));
            }
        }
    }
    m
}

#[test]
fn adapters_start_as_identity_merge_exactly_and_come_off() {
    B::seed(&Default::default(), 11);
    let base: Llama<B> = LlamaConfig::tiny().init(&Default::default());
    let x = ids::<B>();
    let reference = logits(&base, x.clone());
    let c = LoraConfig::new().with_dropout(0.0);
    let fresh = base.clone().with_lora(&c, 11);
    assert!(fresh.has_adapters());
    let d = max_abs_diff(&logits(&fresh, x.clone()), &reference);
    assert!(d <= FLOAT_ORDER, "zero-init B changed the output by {d}");

    let tuned = perturb(fresh);
    let with_adapters = logits(&tuned, x.clone());
    assert!(
        max_abs_diff(&with_adapters, &reference) > 1e-2,
        "adapters had no effect"
    );
    let merged = tuned.merge_lora();
    assert!(!merged.has_adapters());
    let d = max_abs_diff(&logits(&merged, x.clone()), &with_adapters);
    assert!(d < 1e-4, "merged differs from adapter forward by {d}");
    let d = max_abs_diff(&logits(&tuned.without_adapters(), x), &reference);
    assert!(
        d <= FLOAT_ORDER,
        "without adapters differs from the base by {d}"
    );
}

/// Every adapter's `lora_A`, in layer and projection order.
fn lora_a(m: &Llama<B>) -> Vec<Vec<f32>> {
    m.layers
        .iter()
        .flat_map(|l| l.projections())
        .filter_map(|(_, p)| p.lora.as_ref())
        .map(|a| a.lora_a.val().into_data().to_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn a_seed_gives_the_same_adapters_whatever_drew_from_the_generator_before() {
    let device = Default::default();
    let base: Llama<B> = LlamaConfig::tiny().init(&device);
    let c = LoraConfig::new();
    B::seed(&device, 1);
    let first = base.clone().with_lora(&c, 5);
    // The backend's generator moves on before either model's adapters are first read: adapters
    // drawn lazily from it would differ.
    B::seed(&device, 2);
    let second = base.clone().with_lora(&c, 5);
    let _ = Tensor::<B, 1>::random([3], Distribution::Default, &device);
    let a = lora_a(&first);
    assert_eq!(a.len(), 3 * LlamaConfig::tiny().num_hidden_layers);
    assert_eq!(a, lora_a(&second));
    assert_ne!(a, lora_a(&base.clone().with_lora(&c, 6)));
    // PEFT's kaiming-uniform: within ±1/√d_in, and the draws reach close to the bound.
    let d_in = LlamaConfig::tiny().hidden_size as f32;
    for values in &a {
        let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max <= 1.0 / d_in.sqrt() && max > 0.9 / d_in.sqrt(), "{max}");
    }
}

#[test]
fn only_adapters_of_the_chosen_layers_and_targets_get_gradients() {
    let base: Llama<AD> = LlamaConfig::tiny().init(&Default::default());
    let c = LoraConfig::new()
        .with_targets(vec!["q_proj".into(), "up_proj".into()])
        .with_first_layer(1)
        .with_end_layer(Some(3));
    let m = base.with_lora(&c, 0);
    let x = ids::<AD>();
    let out = m.forward(x.clone(), x.ones_like(), &[]);

    let grads = m.logits(out.hidden).powi_scalar(2).mean().backward();
    let mut adapter_grads = 0;
    for (i, layer) in m.layers.iter().enumerate() {
        for (name, p) in layer.projections() {
            assert!(
                p.base.weight.grad(&grads).is_none(),
                "layer {i} {name} base got a gradient"
            );
            let wanted = (1..3).contains(&i) && (name == "q_proj" || name == "up_proj");
            assert_eq!(p.lora.is_some(), wanted, "layer {i} {name}");
            if let Some(a) = &p.lora {
                assert!(a.lora_b.grad(&grads).is_some(), "layer {i} {name} lora_b");
                adapter_grads += 1;
            }
        }
    }
    assert_eq!(adapter_grads, 4);
    assert!(m.embed_tokens.weight.grad(&grads).is_none());
    assert!(m.norm.gamma.grad(&grads).is_none());
}

#[test]
fn adapters_save_in_peft_layout() {
    let m: Llama<B> = LlamaConfig::tiny().init(&Default::default());
    let c = LoraConfig::new();
    let m = perturb(m.with_lora(&c, 0));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapters");
    save_lora_adapters(&m, &c, "tiny", &out).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n = m.config.num_hidden_layers;
    assert_eq!(st.len(), n * 3 * 2);
    let a = st
        .tensor("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight")
        .unwrap();
    let b = st
        .tensor("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
        .unwrap();
    let (h, f) = (m.config.hidden_size, m.config.intermediate_size);
    assert_eq!(a.shape(), &[8, h]);
    assert_eq!(b.shape(), &[f, 8]);
    // B's saved [d_out, r] is the transpose of burn's [r, d_out].
    let burn_b = m.layers[0].mlp.up_proj.lora.as_ref().unwrap().lora_b.val();
    let burn_b = burn_b.into_data().to_vec::<f32>().unwrap();
    let saved: Vec<f32> = b
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(saved[1], burn_b[f]); // saved[0][1] = burn[1][0]
    assert!(
        st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
            .is_ok()
    );
}
