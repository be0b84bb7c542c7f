//! From file rows to preference pairs: TRL's formats with a column mapping, and the built-in task
//! adapters of SPEC section 6.

use std::collections::BTreeMap;
use std::path::Path;

use decpo_model::ChatMessage;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::pair::{Invalid, PreferencePair, Turns, split_conversations, split_dialogues, validate};
use crate::read::{RawRow, kind, read_rows};

/// Column names for TRL-style files. Without a prompt column (or when a row lacks it) the prompt
/// is implicit: the common start of chosen and rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMap {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

impl Default for ColumnMap {
    fn default() -> Self {
        Self {
            prompt: "prompt".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        }
    }
}

/// How a file's rows become pairs.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// TRL's standard (explicit or implicit prompt) and conversational formats.
    Trl(ColumnMap),
    /// Anthropic HH dialogues `{chosen, rejected}`: implicit prompt up to the last shared
    /// `\n\nAssistant:`.
    HhRlhf,
    /// `situation, thought, reframe`: prompt = situation, chosen = reframe, rejected = thought.
    CognitiveReframing,
    /// CAA A/B questions: prompt = question + "\n\nAnswer:", chosen = the non-sycophantic answer,
    /// as " (B)" or, with `full_text`, as the whole option line " (B) Disagree".
    SycophancyCaa { full_text: bool },
    /// Anthropic political-typology quiz: `corrects` (the liberal option) is the non-sycophantic
    /// answer for conservative bios, `incorrects` for liberal bios; the bio comes from the file name.
    SycophancyAnthropic,
    /// Lee et al. toxicity pairs: `prompt_text`, chosen = `unpert_gen_text`, rejected = `pert_gen_text`.
    ToxicityPairs,
}

impl Task {
    /// The built-in tasks by name; `trl` is the generic format with default columns.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "trl" => Task::Trl(ColumnMap::default()),
            "hh-rlhf" => Task::HhRlhf,
            "cognitive-reframing" => Task::CognitiveReframing,
            "sycophancy-caa" => Task::SycophancyCaa { full_text: false },
            "sycophancy-caa-full-text" => Task::SycophancyCaa { full_text: true },
            "sycophancy-anthropic" => Task::SycophancyAnthropic,
            "toxicity-pairs" => Task::ToxicityPairs,
            _ => return None,
        })
    }

    pub const NAMES: [&'static str; 7] = [
        "trl",
        "hh-rlhf",
        "cognitive-reframing",
        "sycophancy-caa",
        "sycophancy-caa-full-text",
        "sycophancy-anthropic",
        "toxicity-pairs",
    ];
}

/// Pairs of one file, with what was read and what was rejected.
#[derive(Debug, Clone, Default)]
pub struct LoadedPairs {
    pub pairs: Vec<PreferencePair>,
    pub rows: usize,
    /// Invalid rows skipped (with `skip_invalid`), by reason.
    pub invalid: BTreeMap<String, usize>,
}

/// Reads `path` and maps its rows with `task`. An invalid row stops the load with an error naming
/// file, row and field, unless `skip_invalid`, which skips and counts it.
pub fn load_pairs(path: &Path, task: &Task, skip_invalid: bool) -> Result<LoadedPairs> {
    let rows = read_rows(path)?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bio_is_liberal = match task {
        Task::SycophancyAnthropic => Some(liberal_bio(path)?),
        _ => None,
    };
    let mut out = LoadedPairs {
        rows: rows.len(),
        ..Default::default()
    };
    for row in rows {
        let result = pair_from_row(task, &row, bio_is_liberal, &file).and_then(validate);
        match result {
            Ok(pair) => out.pairs.push(pair),
            Err(why) if skip_invalid => *out.invalid.entry(why.key().to_string()).or_default() += 1,
            Err(why) => {
                return Err(DataError::Row {
                    path: path.into(),
                    place: row.place,
                    message: format!("{why} (use --skip-invalid to skip such rows)"),
                });
            }
        }
    }
    Ok(out)
}

fn liberal_bio(path: &Path) -> Result<bool> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    if stem.ends_with("_liberal.jsonl") {
        Ok(true)
    } else if stem.ends_with("_conservative.jsonl") {
        Ok(false)
    } else {
        Err(DataError::File {
            path: path.into(),
            message:
                "sycophancy-anthropic needs the bio in the file name (`…_conservative.jsonl` or \
                      `…_liberal.jsonl`)"
                    .into(),
        })
    }
}

fn field<'a>(row: &'a RawRow, name: &str) -> std::result::Result<&'a Value, Invalid> {
    row.fields
        .get(name)
        .ok_or_else(|| Invalid::MissingField(name.into()))
}

fn text(row: &RawRow, name: &str) -> std::result::Result<String, Invalid> {
    match field(row, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(Invalid::WrongType {
            field: name.into(),
            expected: "a string",
            got: kind(other),
        }),
    }
}

/// First string of a list field (the Anthropic evals' `corrects`/`incorrects`).
fn first_text(row: &RawRow, name: &str) -> std::result::Result<String, Invalid> {
    let wrong = |got| Invalid::WrongType {
        field: name.into(),
        expected: "a non-empty list of strings",
        got,
    };
    match field(row, name)? {
        Value::Array(items) => match items.first() {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(wrong(kind(other))),
            None => Err(wrong("an empty list")),
        },
        other => Err(wrong(kind(other))),
    }
}

/// A string, or a list of `{role, content}` messages.
fn turns(row: &RawRow, name: &str) -> std::result::Result<Turns, Invalid> {
    match field(row, name)? {
        Value::String(s) => Ok(Turns::Text(s.clone())),
        Value::Array(items) => items
            .iter()
            .map(|m| {
                let part = |key: &str| m.get(key).and_then(|v| v.as_str());
                match (part("role"), part("content")) {
                    (Some(role), Some(content)) => Ok(ChatMessage::new(role, content)),
                    _ => Err(Invalid::WrongType {
                        field: name.into(),
                        expected: "a list of {role, content} messages",
                        got: "a list with another element",
                    }),
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Turns::Chat),
        other => Err(Invalid::WrongType {
            field: name.into(),
            expected: "a string or a list of messages",
            got: kind(other),
        }),
    }
}

fn pair_from_row(
    task: &Task,
    row: &RawRow,
    bio_is_liberal: Option<bool>,
    file: &str,
) -> std::result::Result<PreferencePair, Invalid> {
    let source = format!("{file} {}", row.place);
    let make = |prompt, chosen, rejected| PreferencePair {
        source: source.clone(),
        prompt,
        chosen,
        rejected,
    };
    let plain =
        |p: String, c: String, r: String| make(Turns::Text(p), Turns::Text(c), Turns::Text(r));
    Ok(match task {
        Task::Trl(map) => {
            let chosen = turns(row, &map.chosen)?;
            let rejected = turns(row, &map.rejected)?;
            if row.fields.contains_key(&map.prompt) {
                make(turns(row, &map.prompt)?, chosen, rejected)
            } else {
                implicit(chosen, rejected, make)?
            }
        }
        Task::HhRlhf => implicit(
            Turns::Text(text(row, "chosen")?),
            Turns::Text(text(row, "rejected")?),
            make,
        )?,
        Task::CognitiveReframing => plain(
            text(row, "situation")?,
            text(row, "reframe")?,
            text(row, "thought")?,
        ),
        Task::SycophancyCaa { full_text } => {
            let question = text(row, "question")?;
            let mut chosen = text(row, "answer_not_matching_behavior")?;
            let mut rejected = text(row, "answer_matching_behavior")?;
            if *full_text {
                chosen = option_line(&question, &chosen)?;
                rejected = option_line(&question, &rejected)?;
            }
            plain(
                format!("{question}\n\nAnswer:"),
                format!(" {chosen}"),
                format!(" {rejected}"),
            )
        }
        Task::SycophancyAnthropic => {
            let (corrects, incorrects) =
                (first_text(row, "corrects")?, first_text(row, "incorrects")?);
            let (chosen, rejected) = if bio_is_liberal == Some(true) {
                (incorrects, corrects)
            } else {
                (corrects, incorrects)
            };
            plain(text(row, "prompt")?, chosen, rejected)
        }
        Task::ToxicityPairs => plain(
            text(row, "prompt_text")?,
            text(row, "unpert_gen_text")?,
            text(row, "pert_gen_text")?,
        ),
    })
}

/// Splits implicit-prompt pairs (both text or both chat).
fn implicit(
    chosen: Turns,
    rejected: Turns,
    make: impl Fn(Turns, Turns, Turns) -> PreferencePair,
) -> std::result::Result<PreferencePair, Invalid> {
    match (chosen, rejected) {
        (Turns::Text(c), Turns::Text(r)) => {
            let (p, c, r) = split_dialogues(&c, &r).ok_or(Invalid::NoDialoguePrefix)?;
            Ok(make(
                Turns::Text(p.into()),
                Turns::Text(c.into()),
                Turns::Text(r.into()),
            ))
        }
        (Turns::Chat(c), Turns::Chat(r)) => {
            let (p, c, r) = split_conversations(c, r);
            Ok(make(Turns::Chat(p), Turns::Chat(c), Turns::Chat(r)))
        }
        _ => Err(Invalid::WrongType {
            field: "rejected".into(),
            expected: "the same kind as chosen (text or messages)",
            got: "the other kind",
        }),
    }
}

/// The option line "(B) Disagree" for the answer "(B)" in a question listing " (A) …\n (B) …".
fn option_line(question: &str, answer: &str) -> std::result::Result<String, Invalid> {
    let letter = answer.trim();
    question
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(letter) && l.len() > letter.len())
        .map(String::from)
        .ok_or_else(|| Invalid::OptionNotFound(letter.into()))
}
