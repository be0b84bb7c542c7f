//! GGUF files (llama.cpp): header, metadata, tensor directory, and a [`TensorSource`] that serves
//! the tensors dequantised, under Hugging Face names and with llama.cpp's Q/K row order undone.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::{GgmlType, dequantize, type_name};
use super::{HostTensor, TensorSource};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result, io_err};
use crate::names::hf_from_gguf;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

/// Where a tensor lives in the file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// Dimensions outermost first (GGUF stores them innermost first; this is reversed).
    pub shape: Vec<usize>,
    pub type_code: u32,
    /// Absolute byte offset in the file.
    pub offset: usize,
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: BTreeMap<String, GgufTensorInfo>,
    map: Mmap,
}

/// How deep metadata arrays may nest (llama.cpp's files use one level).
const MAX_ARRAY_DEPTH: usize = 8;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, message: String) -> ModelError {
        ModelError::Corrupt {
            path: self.path.into(),
            message,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "file ends inside {what} at byte {} (needs {n} more bytes)",
                    self.pos
                ))
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count that must fit in what is left of the file, `min_size` bytes per item.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.corrupt(format!("{what} = {n} is larger than the rest of the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt(format!("{what} is not UTF-8")))
    }

    /// A metadata value of type `ty`, inside `depth` arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let mut fixed = |n: usize| self.take(n, key).map(|b| b.to_vec());
        Ok(match ty {
            0 => GgufValue::Int(fixed(1)?[0] as i64),
            1 => GgufValue::Int(fixed(1)?[0] as i8 as i64),
            2 => GgufValue::Int(u16::from_le_bytes(fixed(2)?.try_into().expect("2")) as i64),
            3 => GgufValue::Int(i16::from_le_bytes(fixed(2)?.try_into().expect("2")) as i64),
            4 => GgufValue::Int(u32::from_le_bytes(fixed(4)?.try_into().expect("4")) as i64),
            5 => GgufValue::Int(i32::from_le_bytes(fixed(4)?.try_into().expect("4")) as i64),
            6 => GgufValue::Float(f32::from_le_bytes(fixed(4)?.try_into().expect("4")) as f64),
            7 => GgufValue::Bool(fixed(1)?[0] != 0),
            8 => GgufValue::Str(self.string(key)?),
            // Arrays of arrays are legal; a deep nest (12 bytes a level) would exhaust the stack.
            9 if depth >= MAX_ARRAY_DEPTH => {
                return Err(self.corrupt(format!(
                    "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                )));
            }
            9 => {
                let item = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Int(u64::from_le_bytes(fixed(8)?.try_into().expect("8")) as i64),
            11 => GgufValue::Int(i64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            12 => GgufValue::Float(f64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            other => {
                return Err(
                    self.corrupt(format!("metadata `{key}` has unknown value type {other}"))
                );
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: read-only mapping owned by the returned value.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let (metadata, tensors) = Self::parse(&map, path)?;
        Ok(Self {
            path: path.into(),
            metadata,
            tensors,
            map,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        bytes: &[u8],
        path: &Path,
    ) -> Result<(
        BTreeMap<String, GgufValue>,
        BTreeMap<String, GgufTensorInfo>,
    )> {
        let mut r = Reader {
            bytes,
            pos: 0,
            path,
        };
        if r.take(4, "the magic number")? != b"GGUF" {
            return Err(r.corrupt("not a GGUF file (the magic number is not `GGUF`)".into()));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(r.corrupt(format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let n_tensors = r.count("the tensor count", 8)?;
        let n_kv = r.count("the metadata count", 8)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(r.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)? as usize);
            }
            dims.reverse();
            let type_code = r.u32(&name)?;
            let offset = r.u64(&name)?;
            raw.push((name, dims, type_code, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(GgufValue::Int(a)) if *a > 0 => *a as usize,
            Some(other) => {
                return Err(r.corrupt(format!("general.alignment is invalid: {other:?}")));
            }
            None => 32,
        };
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, type_code, offset) in raw {
            let Some(n) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
                return Err(r.corrupt(format!(
                    "tensor `{name}` has shape {shape:?}: more elements than a machine can address"
                )));
            };
            let size = GgmlType::from_code(type_code).and_then(|t| t.bytes_for(n));
            let offset = data_start.saturating_add(offset as usize);
            if let Some(size) = size
                && offset.checked_add(size).is_none_or(|end| end > bytes.len())
            {
                return Err(r.corrupt(format!(
                    "tensor `{name}` ({size} bytes at offset {offset}) runs past the end of the file ({} bytes)",
                    bytes.len()
                )));
            }
            tensors.insert(
                name,
                GgufTensorInfo {
                    shape,
                    type_code,
                    offset,
                },
            );
        }
        Ok((metadata, tensors))
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn missing_key(&self, key: &str) -> ModelError {
        ModelError::Corrupt {
            path: self.path.clone(),
            message: format!("metadata `{key}` is missing or has the wrong type"),
        }
    }

    pub fn get_int(&self, key: &str) -> Result<i64> {
        match self.get(key) {
            Some(GgufValue::Int(v)) => Ok(*v),
            _ => Err(self.missing_key(key)),
        }
    }

    pub fn get_float(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(GgufValue::Float(v)) => Ok(*v),
            Some(GgufValue::Int(v)) => Ok(*v as f64),
            _ => Err(self.missing_key(key)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(GgufValue::Str(v)) => Ok(v),
            _ => Err(self.missing_key(key)),
        }
    }

    /// A string array (e.g. `tokenizer.ggml.tokens`).
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(GgufValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    GgufValue::Str(s) => Ok(s.as_str()),
                    _ => Err(self.missing_key(key)),
                })
                .collect(),
            _ => Err(self.missing_key(key)),
        }
    }

    /// An integer array (e.g. `tokenizer.ggml.token_type`).
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            Some(GgufValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    GgufValue::Int(i) => Ok(*i),
                    _ => Err(self.missing_key(key)),
                })
                .collect(),
            _ => Err(self.missing_key(key)),
        }
    }

    /// The architecture from `{arch}.*` metadata (arch must be `llama`).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Unsupported {
                path: self.path.clone(),
                message: format!("architecture `{arch}` (only llama)"),
            });
        }
        if self.tensors.contains_key("rope_freqs.weight") {
            return Err(ModelError::Unsupported {
                path: self.path.clone(),
                message:
                    "per-frequency RoPE factors (rope_freqs.weight, Llama 3.1+ GGUF); load the \
                          Hugging Face directory instead"
                        .into(),
            });
        }
        let int = |k: &str| self.get_int(&format!("llama.{k}")).map(|v| v as usize);
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => self.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let id = |k: &str| {
            self.get_int(&format!("tokenizer.ggml.{k}"))
                .ok()
                .map(|v| v as u32)
        };
        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim: int("attention.key_length")
                .or_else(|_| int("rope.dimension_count"))
                .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: self.get_float("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: self.get_float("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            bos_token_id: id("bos_token_id"),
            eos_token_ids: id("eos_token_id").into_iter().collect(),
            pad_token_id: id("padding_token_id"),
        };
        config.validate().map_err(|message| ModelError::Config {
            origin: self.path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Dequantises tensor `name` (GGUF naming) to f32, shape outermost first.
    pub fn read_gguf_tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            })?;
        let ty =
            GgmlType::from_code(info.type_code).ok_or_else(|| ModelError::UnsupportedDType {
                path: self.path.clone(),
                name: name.into(),
                dtype: format!(
                    "{} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                    type_name(info.type_code)
                ),
            })?;
        // Opening checked that the element count fits.
        let n = info.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        let size = ty.bytes_for(n).ok_or_else(|| ModelError::Corrupt {
            path: self.path.clone(),
            message: format!(
                "tensor `{name}` has {n} elements, not a whole number of {ty:?} blocks"
            ),
        })?;
        let mut data = vec![0f32; n];
        dequantize(ty, &self.map[info.offset..info.offset + size], &mut data);
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// Serves a GGUF llama file under Hugging Face tensor names.
pub struct GgufSource {
    file: GgufFile,
    /// Hugging Face name -> GGUF name.
    names: BTreeMap<String, String>,
    heads: usize,
    kv_heads: usize,
}

impl GgufSource {
    pub fn new(file: GgufFile, config: &LlamaConfig) -> Result<Self> {
        let mut names = BTreeMap::new();
        for gguf in file.tensors.keys() {
            // Unknown tensors keep their GGUF name so the loader reports them as unused.
            names.insert(
                hf_from_gguf(gguf).unwrap_or_else(|| gguf.clone()),
                gguf.clone(),
            );
        }
        Ok(Self {
            file,
            names,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
        })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// Undoes llama.cpp's Q/K row permutation. llama.cpp stores, within each head of `head_dim` rows,
/// row `2i + j` = Hugging Face row `j * head_dim / 2 + i` (interleaved RoPE pairs).
fn unpermute_rows(t: &mut HostTensor, heads: usize) {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let src = std::mem::take(&mut t.data);
    let mut out = vec![0f32; src.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = (h * head_dim + 2 * i + j) * cols;
                let to = (h * head_dim + j * half + i) * cols;
                out[to..to + cols].copy_from_slice(&src[from..from + cols]);
            }
        }
    }
    t.data = out;
}

impl TensorSource for GgufSource {
    fn path(&self) -> &Path {
        &self.file.path
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let gguf = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.file.path.clone(),
                name: name.into(),
            })?;
        let mut t = self.file.read_gguf_tensor(gguf)?;
        let heads = if name.ends_with("q_proj.weight") {
            Some(self.heads)
        } else if name.ends_with("k_proj.weight") {
            Some(self.kv_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            if t.shape.len() != 2 || t.shape[0] % (2 * heads) != 0 {
                return Err(ModelError::Shape {
                    path: self.file.path.clone(),
                    name: gguf.clone(),
                    got: t.shape,
                    expected: vec![heads, 0],
                });
            }
            unpermute_rows(&mut t, heads);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_order() {
        // One head of 4 rows: HF rows [a0, a1, b0, b1] are stored by llama.cpp as [a0, b0, a1, b1].
        let mut t = HostTensor {
            shape: vec![4, 1],
            data: vec![0.0, 2.0, 1.0, 3.0],
        };
        unpermute_rows(&mut t, 1);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("decpo-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gguf");
        std::fs::write(&path, b"GGUF\x03\x00\x00\x00\x01").unwrap();
        let err = GgufFile::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("bad.gguf") && err.contains("file ends inside"),
            "{err}"
        );
        std::fs::write(&path, b"PK\x03\x04 not a gguf").unwrap();
        let err = GgufFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deeply_nested_metadata_arrays_are_an_error_not_a_stack_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested.gguf");
        // GGUF v3, no tensors, one metadata key holding arrays of arrays of ... 100 000 deep.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(9u32.to_le_bytes());
        for _ in 0..100_000 {
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = GgufFile::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("nested.gguf") && err.contains("nests arrays deeper than 8"),
            "{err}"
        );
    }
}
