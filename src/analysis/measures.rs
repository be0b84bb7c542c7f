//! What `analyze` computes for one model and writes for several: FD/AV per layer, top tokens,
//! JSON, CSV and plots. Also used by `experiment`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use decpo_alignment::measure::{
    last_token_activations, measure_rows, site_activations, top_tokens,
};
use decpo_alignment::train::data::PairSet;
use decpo_alignment::train::run::ProbePoint;
use decpo_alignment::{RegRows, Site};
use decpo_datasets::BatchIds;
use decpo_datasets::{TokenizedPair, first_distinct};
use decpo_model::{Llama, LlamaTokenizer};
use serde::{Deserialize, Serialize};

use plotters::prelude::SeriesLabelPosition;

use super::plots::{Labels, Series, line_chart};
use crate::run::data::{eos_id, load_with_tokenizer, prepare};
use crate::run::{DataConfig, RunConfig};

/// FD and AV of one layer, with its relative depth l / (L − 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRow {
    pub layer: usize,
    pub relative_depth: f64,
    pub fd: f64,
    pub av: f64,
    /// Hoyer sparsity (absent in analyses written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
}

/// The top tokens of a layer's most active neuron, decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopTokenRow {
    pub layer: usize,
    pub neuron: usize,
    pub mean_activation: f64,
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub logits: Vec<f64>,
}

/// Where a model's `up_proj` rows are read (SPEC section 3's sites).
pub enum Measured<'a> {
    /// The last token of each prompt, prompts alone (SPEC section 4; the `prompt-last` site).
    Prompts {
        prompts: &'a [Vec<u32>],
        pad_id: u32,
    },
    /// A site other than `prompt-last`, with its rows, over pairs run `micro_batch` at a time.
    Pairs {
        set: &'a PairSet,
        site: Site,
        rows: RegRows,
        micro_batch: usize,
    },
}

fn prompt_last() -> Site {
    Site::PromptLast
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelAnalysis {
    pub model: String,
    pub path: PathBuf,
    /// The prompts measured (`prompt-last`) or the pairs whose rows were (other sites).
    pub prompts: usize,
    /// Where the rows were read (absent in analyses written before sites: `prompt-last`).
    #[serde(default = "prompt_last")]
    pub site: Site,
    /// Which sequences gave rows at a completion site.
    #[serde(default)]
    pub rows: RegRows,
    pub n_layers: usize,
    pub layers: Vec<LayerRow>,
    pub top_tokens: Vec<TopTokenRow>,
}

impl ModelAnalysis {
    /// The table `analyze` prints: FD, AV and the top tokens of the most active neuron per layer.
    pub fn describe(&self) -> String {
        let mut out = match self.site {
            Site::PromptLast => format!(
                "== {} ({} prompts, site prompt-last)\n",
                self.model, self.prompts
            ),
            site => format!(
                "== {} ({} pairs, site {}, rows {})\n",
                self.model,
                self.prompts,
                setting_name(&site),
                setting_name(&self.rows)
            ),
        };
        out += "layer  rel.depth      FD          AV  sparsity   top tokens of the most active neuron\n";
        for (m, t) in self.layers.iter().zip(&self.top_tokens) {
            let tokens: Vec<String> = t.tokens.iter().take(6).map(|s| format!("{s:?}")).collect();
            out += &format!(
                "{:>5}  {:>9.3}  {:>8.4}  {:>10.4}  {:>8.4}   n{}: {}\n",
                m.layer,
                m.relative_depth,
                m.fd,
                m.av,
                m.sparsity.unwrap_or(f64::NAN),
                t.neuron,
                tokens.join(" ")
            );
        }
        out
    }
}

/// The layers of `--layers`: `all`, or a comma-separated list of 0-based indices below `n`.
pub fn parse_layers(spec: &str, n: usize) -> anyhow::Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..n).collect());
    }
    spec.split(',')
        .map(|s| {
            let l: usize = s
                .trim()
                .parse()
                .with_context(|| format!("--layers: `{s}` is not a layer index"))?;
            if l >= n {
                bail!("--layers: layer {l} out of range (the model has {n})");
            }
            Ok(l)
        })
        .collect()
}

fn relative_depth(layer: usize, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        layer as f64 / (n - 1) as f64
    }
}

/// A setting's name as its flag and the configuration write it (`completion-mean`, `all`).
pub fn setting_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Measures `model` (already loaded) where `what` says.
#[allow(clippy::too_many_arguments)]
pub fn analyze_loaded<B: Backend>(
    name: String,
    path: PathBuf,
    model: &Llama<B>,
    tok: &LlamaTokenizer,
    what: Measured,
    layers: &[usize],
    top_k: usize,
    device: &B::Device,
) -> anyhow::Result<ModelAnalysis> {
    let (z, count, site, rows) = match what {
        Measured::Prompts { prompts, pad_id } => (
            last_token_activations(model, prompts, pad_id, 16, layers, device),
            prompts.len(),
            Site::PromptLast,
            RegRows::All,
        ),
        Measured::Pairs {
            set,
            site,
            rows,
            micro_batch,
        } => {
            let (z, pairs) = site_activations(model, set, site, rows, layers, micro_batch, device);
            (z, pairs, site, rows)
        }
    };
    let n_rows = z.first().map_or(0, |z| z.dims()[0]);
    if n_rows < 2 {
        bail!(
            "{name}: FD needs at least 2 rows, got {n_rows} from {count} {} at site {} \
             (FD compares rows with each other: more distinct held-out prompts are needed, \
             from more data or a larger data.eval_fraction)",
            if site == Site::PromptLast {
                "prompts"
            } else {
                "pairs"
            },
            setting_name(&site)
        );
    }
    let n = model.config.num_hidden_layers;
    let mut out = ModelAnalysis {
        model: name,
        path,
        prompts: count,
        site,
        rows,
        n_layers: n,
        layers: Vec::new(),
        top_tokens: Vec::new(),
    };
    for (z, &layer) in z.into_iter().zip(layers) {
        let m = measure_rows(layer, z.clone());
        out.layers.push(LayerRow {
            layer,
            relative_depth: relative_depth(layer, n),
            fd: m.fd,
            av: m.av,
            sparsity: m.sparsity,
        });
        let t = top_tokens(model, layer, z, top_k);
        let tokens = t
            .ids
            .iter()
            .map(|&id| {
                tok.decode(&[id], false)
                    .unwrap_or_else(|_| format!("<{id}>"))
            })
            .collect();
        out.top_tokens.push(TopTokenRow {
            layer,
            neuron: t.neuron,
            mean_activation: t.mean_activation,
            ids: t.ids,
            tokens,
            logits: t.logits,
        });
    }
    Ok(out)
}

/// Loads the model at `path`, tokenizes the pairs of `data` with its tokenizer, splits them as
/// a run with `seed` does, and measures it at `site` (with `rows` at a completion site) on at
/// most `n` distinct prompts (`prompt-last`) or `n` pairs (other sites).
#[allow(clippy::too_many_arguments)]
pub fn analyze_model<B: Backend>(
    path: &Path,
    name: Option<String>,
    data: &DataConfig,
    seed: u64,
    all_prompts: bool,
    n: usize,
    (site, rows): (Site, RegRows),
    layers: impl Fn(usize) -> anyhow::Result<Vec<usize>>,
    top_k: usize,
    device: &B::Device,
) -> anyhow::Result<ModelAnalysis> {
    let (model, tok, resolved) = load_with_tokenizer::<B>(path, device)?;
    let name = name.unwrap_or_else(|| {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    });
    let eos = eos_id(&tok, &name)?;
    let prepared = prepare(data, &tok, eos, seed)?;
    eprint!("{}", prepared.summary);
    let source: Vec<TokenizedPair> = if all_prompts {
        prepared.train.into_iter().chain(prepared.eval).collect()
    } else {
        prepared.eval
    };
    if source.is_empty() {
        let side = if all_prompts { "" } else { "held-out " };
        bail!("no {side}pairs to measure {name} on (see the data summary above)");
    }
    let layers = layers(model.config.num_hidden_layers)?;
    let pad_id = tok.pad_id();
    if site == Site::PromptLast {
        let prompts: Vec<Vec<u32>> = first_distinct(&source, n, TokenizedPair::prompt_key)
            .into_iter()
            .map(|i| source[i].prompt_ids.clone())
            .collect();
        let what = Measured::Prompts {
            prompts: &prompts,
            pad_id,
        };
        return analyze_loaded(name, resolved, &model, &tok, what, &layers, top_k, device);
    }
    let set = PairSet {
        pairs: source.into_iter().take(n).collect(),
        ids: BatchIds { pad: pad_id, eos },
        reference: None,
    };
    let what = Measured::Pairs {
        set: &set,
        site,
        rows,
        micro_batch: 8,
    };
    analyze_loaded(name, resolved, &model, &tok, what, &layers, top_k, device)
}

/// FD/AV of every layer at each evaluation of a training run (its `probe` log lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunCurve {
    pub name: String,
    /// The regularized layer (from the run's config.toml; ⌊L/3⌋ without a regularizer).
    pub dec_layer: usize,
    pub points: Vec<ProbePoint>,
}

/// Reads the probe lines of the run in `dir` (train's `--out`, or its `decpo/` directory).
pub fn fd_over_steps(dir: &Path) -> anyhow::Result<RunCurve> {
    let log = [dir.join("decpo/log.jsonl"), dir.join("log.jsonl")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: no log.jsonl (is it a train run directory?)",
                dir.display()
            )
        })?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("{}", log.display()))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", log.display(), i + 1))?;
        if v["split"] == "probe" {
            let p: ProbePoint = serde_json::from_value(v)
                .with_context(|| format!("{} line {}: bad probe line", log.display(), i + 1))?;
            points.push(p);
        }
    }
    if points.is_empty() {
        bail!(
            "{}: no probe lines (train with [train] probe_prompts > 0)",
            log.display()
        );
    }
    let n_layers = points[0].layers.len();
    let dec_layer = RunConfig::of_run(dir)
        .ok()
        .flatten()
        .and_then(|c| c.objective.regularizer)
        .map_or(n_layers / 3, |r| r.layer);
    let name = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunCurve {
        name,
        dec_layer,
        points,
    })
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{}: {e}", path.display())
}

/// Writes analysis.json, layers.csv, top_tokens.csv and the plots into `out`.
pub fn write_outputs(
    out: &Path,
    analyses: &[ModelAnalysis],
    runs: &[RunCurve],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let json = out.join("analysis.json");
    let doc = serde_json::json!({ "models": analyses, "runs": runs });
    std::fs::write(&json, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("{}", json.display()))?;
    let mut files = vec![json];
    files.extend(write_csv(out, analyses)?);
    files.extend(depth_plots(out, analyses)?);
    if !runs.is_empty() {
        files.extend(fd_steps_plot(out, runs)?);
    }
    Ok(files)
}

/// layers.csv (FD/AV per model and layer, and the site they were read at) and top_tokens.csv.
fn write_csv(out: &Path, analyses: &[ModelAnalysis]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let path = out.join("layers.csv");
    let mut w = csv::Writer::from_path(&path).map_err(csv_err(&path))?;
    w.write_record([
        "model",
        "site",
        "layer",
        "relative_depth",
        "fd",
        "av",
        "sparsity",
    ])
    .map_err(csv_err(&path))?;
    for a in analyses {
        for l in &a.layers {
            w.write_record([
                a.model.clone(),
                setting_name(&a.site),
                l.layer.to_string(),
                format!("{:.4}", l.relative_depth),
                format!("{:.6}", l.fd),
                format!("{:.6}", l.av),
                l.sparsity.map_or_else(String::new, |v| format!("{v:.6}")),
            ])
            .map_err(csv_err(&path))?;
        }
    }
    w.flush()?;
    files.push(path);

    let path = out.join("top_tokens.csv");
    let mut w = csv::Writer::from_path(&path).map_err(csv_err(&path))?;
    w.write_record([
        "model",
        "layer",
        "neuron",
        "mean_activation",
        "rank",
        "id",
        "token",
        "logit",
    ])
    .map_err(csv_err(&path))?;
    for a in analyses {
        for t in &a.top_tokens {
            for (rank, ((id, token), logit)) in
                t.ids.iter().zip(&t.tokens).zip(&t.logits).enumerate()
            {
                w.write_record([
                    a.model.clone(),
                    t.layer.to_string(),
                    t.neuron.to_string(),
                    format!("{:.4}", t.mean_activation),
                    (rank + 1).to_string(),
                    id.to_string(),
                    token.clone(),
                    format!("{logit:.4}"),
                ])
                .map_err(csv_err(&path))?;
            }
        }
    }
    w.flush()?;
    files.push(path);
    Ok(files)
}

/// FD and AV per relative depth, one line per model; AV differences against the first model.
fn depth_plots(out: &Path, analyses: &[ModelAnalysis]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Every title says where the rows were read; a legend entry too when the models differ in it.
    let same_site = analyses.windows(2).all(|w| w[0].site == w[1].site);
    let at = match analyses.first() {
        Some(a) if same_site => format!(" (site {})", setting_name(&a.site)),
        _ => " (sites as in the legend)".to_string(),
    };
    let by_depth = |f: fn(&LayerRow) -> f64| -> Vec<Series> {
        analyses
            .iter()
            .enumerate()
            .map(|(i, a)| Series {
                name: if same_site {
                    a.model.clone()
                } else {
                    format!("{} ({})", a.model, setting_name(&a.site))
                },
                points: a.layers.iter().map(|l| (l.relative_depth, f(l))).collect(),
                color: i,
            })
            .collect()
    };
    files.extend(line_chart(
        &out.join("fd_depth"),
        &Labels {
            title: &format!("Feature decorrelation per layer{at}"),
            x: "relative depth l / (L - 1)",
            y: "FD = 1 - mean pairwise cosine",
            legend: SeriesLabelPosition::LowerLeft,
        },
        &by_depth(|l| l.fd),
        false,
    )?);
    files.extend(line_chart(
        &out.join("av_depth"),
        &Labels {
            title: &format!("Activation variance per layer{at}"),
            x: "relative depth l / (L - 1)",
            y: "AV = mean variance over d_ff",
            legend: SeriesLabelPosition::UpperLeft,
        },
        &by_depth(|l| l.av),
        false,
    )?);
    if analyses.len() > 1 {
        let base = &analyses[0];
        let diffs: Vec<Series> = analyses[1..]
            .iter()
            .enumerate()
            .map(|(i, a)| Series {
                color: i + 1,
                name: format!("{} - {}", a.model, base.model),
                points: a
                    .layers
                    .iter()
                    .filter_map(|l| {
                        let b = base.layers.iter().find(|b| b.layer == l.layer)?;
                        Some((l.relative_depth, l.av - b.av))
                    })
                    .collect(),
            })
            .collect();
        files.extend(line_chart(
            &out.join("av_diff_depth"),
            &Labels {
                title: &format!("AV difference against {}{at}", base.model),
                x: "relative depth l / (L - 1)",
                y: "AV difference",
                legend: SeriesLabelPosition::UpperLeft,
            },
            &diffs,
            true,
        )?);
    }
    Ok(files)
}

/// FD of each run's regularized layer over its training steps.
fn fd_steps_plot(out: &Path, runs: &[RunCurve]) -> anyhow::Result<Vec<PathBuf>> {
    // Colours as the models' when runs follow the models after a base (as in `experiment`).
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            color: i + 1,
            name: format!("{} (layer {})", r.name, r.dec_layer),
            points: r
                .points
                .iter()
                .filter_map(|p| {
                    let l = p.layers.iter().find(|l| l.layer == r.dec_layer)?;
                    Some((p.step as f64, l.fd))
                })
                .collect(),
        })
        .collect();
    line_chart(
        &out.join("fd_steps"),
        &Labels {
            title: "FD of the regularized layer during training (held-out prompts)",
            x: "optimizer step",
            y: "FD",
            legend: SeriesLabelPosition::LowerLeft,
        },
        &series,
        false,
    )
}
