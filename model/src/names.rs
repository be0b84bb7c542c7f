//! The names of the model's parameters: Hugging Face's (`model.layers.{i}.self_attn.q_proj.weight`)
//! with llama.cpp's GGUF names beside them. The one table that loading, saving, the PEFT export,
//! the LoRA targets and the GGUF reader use.

/// One of the seven projections of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionName {
    /// Its Hugging Face name, as LoRA targets name it (`q_proj`).
    pub name: &'static str,
    /// The module that holds it (`self_attn` or `mlp`).
    pub group: &'static str,
    /// Its GGUF name inside `blk.{i}` (`attn_q`).
    pub gguf: &'static str,
}

/// The projections in the order [`crate::decoder::LlamaDecoderLayer::projections`] gives them.
pub const PROJECTIONS: [ProjectionName; 7] = [
    ProjectionName::new("q_proj", "self_attn", "attn_q"),
    ProjectionName::new("k_proj", "self_attn", "attn_k"),
    ProjectionName::new("v_proj", "self_attn", "attn_v"),
    ProjectionName::new("o_proj", "self_attn", "attn_output"),
    ProjectionName::new("gate_proj", "mlp", "ffn_gate"),
    ProjectionName::new("up_proj", "mlp", "ffn_up"),
    ProjectionName::new("down_proj", "mlp", "ffn_down"),
];

/// A decoder layer's two RMSNorms: (Hugging Face name, GGUF name).
pub const INPUT_LAYERNORM: (&str, &str) = ("input_layernorm", "attn_norm");
pub const POST_ATTENTION_LAYERNORM: (&str, &str) = ("post_attention_layernorm", "ffn_norm");

/// The tensors outside the layers: (Hugging Face name, GGUF name).
pub const EMBED_TOKENS: (&str, &str) = ("model.embed_tokens.weight", "token_embd.weight");
pub const NORM: (&str, &str) = ("model.norm.weight", "output_norm.weight");
pub const LM_HEAD: (&str, &str) = ("lm_head.weight", "output.weight");

impl ProjectionName {
    const fn new(name: &'static str, group: &'static str, gguf: &'static str) -> Self {
        Self { name, group, gguf }
    }

    /// The projection called `name` (`q_proj`, ...).
    pub fn named(name: &str) -> Option<&'static Self> {
        PROJECTIONS.iter().find(|p| p.name == name)
    }

    /// Its module path in layer `layer`: `model.layers.{layer}.{group}.{name}`.
    pub fn module(&self, layer: usize) -> String {
        format!("{}.{}.{}", layer_prefix(layer), self.group, self.name)
    }

    /// Its weight in layer `layer`: `model.layers.{layer}.{group}.{name}.weight`.
    pub fn weight(&self, layer: usize) -> String {
        format!("{}.weight", self.module(layer))
    }
}

/// `model.layers.{layer}`.
pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// The weight of a layer's norm (`name` is [`INPUT_LAYERNORM`]`.0` or its sibling's).
pub fn norm_weight(layer: usize, name: &str) -> String {
    format!("{}.{name}.weight", layer_prefix(layer))
}

/// The Hugging Face name of a GGUF tensor, if the model has it.
pub fn hf_from_gguf(gguf: &str) -> Option<String> {
    if let Some((hf, _)) = [EMBED_TOKENS, NORM, LM_HEAD]
        .into_iter()
        .find(|(_, g)| *g == gguf)
    {
        return Some(hf.into());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = part.strip_suffix(".weight")?;
    if let Some(p) = PROJECTIONS.iter().find(|p| p.gguf == part) {
        return Some(p.weight(layer));
    }
    [INPUT_LAYERNORM, POST_ATTENTION_LAYERNORM]
        .into_iter()
        .find(|(_, g)| *g == part)
        .map(|(hf, _)| norm_weight(layer, hf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        // llama.cpp's names (its convert script's table) next to transformers' LlamaForCausalLM.
        for (gguf, hf) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.3.attn_k.weight",
                "model.layers.3.self_attn.k_proj.weight",
            ),
            (
                "blk.3.attn_v.weight",
                "model.layers.3.self_attn.v_proj.weight",
            ),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.12.ffn_gate.weight",
                "model.layers.12.mlp.gate_proj.weight",
            ),
            ("blk.12.ffn_up.weight", "model.layers.12.mlp.up_proj.weight"),
            (
                "blk.12.ffn_down.weight",
                "model.layers.12.mlp.down_proj.weight",
            ),
            (
                "blk.1.attn_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
        ] {
            assert_eq!(hf_from_gguf(gguf).as_deref(), Some(hf), "{gguf}");
        }
        for unknown in [
            "blk.x.attn_q.weight",
            "blk.0.attn_q.bias",
            "rope_freqs.weight",
        ] {
            assert_eq!(hf_from_gguf(unknown), None, "{unknown}");
        }
    }
}
