//! Hugging Face directories: `model.safetensors`, or shards listed in `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, TensorSource};
use crate::error::{ModelError, Result, io_err};

/// The safetensors files of a Hugging Face model directory, memory-mapped.
pub struct HfDirSource {
    dir: PathBuf,
    /// Shard file name and its mapping.
    shards: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `shards`.
    index: BTreeMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl HfDirSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|cause| ModelError::Json {
                    path: index_path.clone(),
                    cause,
                })?;
            let mut files: Vec<String> = index.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".into()]
        };
        let mut source = Self {
            dir: dir.into(),
            shards: Vec::new(),
            index: BTreeMap::new(),
        };
        for name in files {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(io_err(&path))?;
            // SAFETY: the mapping is read-only and lives as long as `source`; a file changed on disk
            // while loading is outside what any loader can guard against.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
            let parsed = SafeTensors::deserialize(&map).map_err(|e| ModelError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for tensor in parsed.names() {
                if source
                    .index
                    .insert(tensor.to_string(), source.shards.len())
                    .is_some()
                {
                    return Err(ModelError::Corrupt {
                        path: path.clone(),
                        message: format!("tensor `{tensor}` appears in two shards"),
                    });
                }
            }
            source.shards.push((path, map));
        }
        Ok(source)
    }
}

impl TensorSource for HfDirSource {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let missing = || ModelError::MissingTensor {
            path: self.dir.clone(),
            name: name.into(),
        };
        let (path, map) = &self.shards[*self.index.get(name).ok_or_else(missing)?];
        let corrupt = |message: String| ModelError::Corrupt {
            path: path.clone(),
            message,
        };
        let view = SafeTensors::deserialize(map)
            .map_err(|e| corrupt(e.to_string()))?
            .tensor(name)
            .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDType {
                    path: path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(HostTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}
