//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, or built from GGUF metadata; chat
//! templates rendered by minijinja with the settings transformers uses.

use std::path::Path;

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::error::{ModelError, Result, io_err};
use crate::weights::gguf::GgufFile;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct LlamaTokenizer {
    pub inner: Tokenizer,
    /// Jinja chat template, as in `tokenizer_config.json`.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    /// Whether encoding with special tokens prepends BOS.
    pub add_bos_token: bool,
    origin: String,
}

/// Bounds on one rendering of a chat template, so that a template which loops for ever or writes
/// without end (a user's own, or a corrupt file's) stops with an error instead of hanging or
/// filling memory. Minijinja counts one unit of fuel per instruction; SmolLM2's template spends
/// 15 plus 23 per message (2 315 for 100 messages), so real templates keep thousands of times the
/// room they use.
const TEMPLATE_FUEL_BASE: u64 = 1_000_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 100_000;
const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// A template's output, refusing to grow past `TEMPLATE_MAX_OUTPUT`.
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Llama 3's pre-tokenizer pattern (llama.cpp `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl LlamaTokenizer {
    fn err(&self, message: impl ToString) -> ModelError {
        ModelError::Tokenizer {
            origin: self.origin.clone(),
            message: message.to_string(),
        }
    }

    /// Reads `tokenizer.json` and `tokenizer_config.json` (and `chat_template.jinja` if present).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let origin = tok_path.display().to_string();
        let inner = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
            serde_json::from_str(&text).map_err(|cause| ModelError::Json {
                path: cfg_path.clone(),
                cause,
            })?
        } else {
            serde_json::Value::Null
        };
        // A special token is either "text" or {"content": "text", ...}.
        let token = |key: &str| {
            let v = cfg.get(key)?;
            v.as_str()
                .or_else(|| v.get("content")?.as_str())
                .map(String::from)
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?)
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from)),
                _ => None,
            }
        };
        let add_bos_token = cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self {
            inner,
            chat_template,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
            add_bos_token,
            origin,
        })
    }

    /// Builds the byte-level BPE tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let origin = file.path.display().to_string();
        let fail = |message: String| ModelError::Tokenizer {
            origin: origin.clone(),
            message,
        };
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); use a \
                 Hugging Face directory with tokenizer.json"
            )));
        }
        let tokens = file.get_strings("tokenizer.ggml.tokens")?;
        let types = file.get_ints("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(fail(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let bpe = gguf_bpe(file, &tokens).map_err(fail)?;
        let mut inner = Tokenizer::new(bpe);
        let pre = gguf_pre_tokenizer(file.get_str("tokenizer.ggml.pre").unwrap_or("default"))
            .map_err(fail)?;
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
        // Control (3) and user-defined (4) tokens are matched whole, before BPE.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| matches!(ty, 3 | 4))
            .map(|(t, ty)| AddedToken::from(t.to_string(), *ty == 3))
            .collect();
        inner.add_special_tokens(&added);
        let token_at = |key: &str| {
            let id = file.get_int(key).ok()? as usize;
            tokens.get(id).map(|t| t.to_string())
        };
        let bos_token = token_at("tokenizer.ggml.bos_token_id");
        let add_bos_token = matches!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(crate::weights::gguf::GgufValue::Bool(true))
        );
        if add_bos_token {
            let bos = bos_token
                .clone()
                .ok_or_else(|| fail("add_bos_token without bos_token_id".into()))?;
            let id = file.get_int("tokenizer.ggml.bos_token_id")? as u32;
            let post = TemplateProcessing::builder()
                .try_single(format!("{bos} $A"))
                .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
                .map_err(|e| fail(e.to_string()))?
                .special_tokens(vec![(bos.clone(), id)])
                .build()
                .map_err(|e| fail(e.to_string()))?;
            inner.with_post_processor(Some(post));
        }
        Ok(Self {
            inner,
            chat_template: file
                .get_str("tokenizer.chat_template")
                .ok()
                .map(String::from),
            bos_token,
            eos_token: token_at("tokenizer.ggml.eos_token_id"),
            pad_token: token_at("tokenizer.ggml.padding_token_id"),
            add_bos_token,
            origin,
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS when the tokenizer is set up to.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id batches are padded with: the pad token, else EOS, else 0 (padding is masked, so
    /// only its being a valid id matters).
    pub fn pad_id(&self) -> u32 {
        self.pad_token
            .as_deref()
            .or(self.eos_token.as_deref())
            .and_then(|t| self.token_to_id(t))
            .unwrap_or(0)
    }

    /// Renders the chat template as transformers does (`trim_blocks`, `lstrip_blocks`, Python
    /// string methods, `raise_exception`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::Template(format!("{} has no chat template", self.origin)))?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let fuel = TEMPLATE_FUEL_BASE + TEMPLATE_FUEL_PER_MESSAGE * messages.len() as u64;
        env.set_fuel(Some(fuel));
        let mut out = CappedOutput::default();
        let rendered = env.template_from_str(template).and_then(|t| {
            t.render_captured_to(
                context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos_token.clone().unwrap_or_default(),
                    eos_token => self.eos_token.clone().unwrap_or_default(),
                },
                &mut out,
            )
            .map(|_| ())
        });
        let message = match rendered {
            Ok(()) => match String::from_utf8(out.bytes) {
                Ok(text) => return Ok(text),
                Err(e) => format!("the chat template wrote invalid UTF-8: {e}"),
            },
            Err(e) if e.kind() == ErrorKind::OutOfFuel => format!(
                "the chat template did not finish within {fuel} steps for {} messages \
                 (a loop without end?)",
                messages.len()
            ),
            Err(_) if out.overflowed => format!(
                "the chat template wrote more than {TEMPLATE_MAX_OUTPUT} bytes for {} messages",
                messages.len()
            ),
            Err(e) => format!("{e:#}"),
        };
        Err(ModelError::Template(format!("{}: {message}", self.origin)))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_hf(&self, dir: &Path, model_max_length: usize) -> Result<()> {
        let tok = dir.join("tokenizer.json");
        self.inner
            .save(&tok, false)
            .map_err(|e| ModelError::Tokenizer {
                origin: tok.display().to_string(),
                message: e.to_string(),
            })?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
            "chat_template": self.chat_template,
        });
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        std::fs::write(&path, text).map_err(io_err(&path))
    }
}

/// The byte-level BPE model of a GGUF file's vocabulary (`tokens`, by id) and merges.
fn gguf_bpe(file: &GgufFile, tokens: &[&str]) -> std::result::Result<BPE, String> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = file
        .get_strings("tokenizer.ggml.merges")
        .map_err(|e| e.to_string())?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {i} `{m}` is not two tokens"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| e.to_string())
}

/// The pre-tokenizer a GGUF file names in `tokenizer.ggml.pre`.
fn gguf_pre_tokenizer(name: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match name {
        "default" | "gpt2" => byte_level.into(),
        // SmolLM: every digit is its own pre-token, then GPT-2's byte-level split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| e.to_string())?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        other => return Err(format!("pre-tokenizer `{other}` is not supported")),
    })
}
