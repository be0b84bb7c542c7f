//! Pairs to token ids, the way TRL's DPO trainer does it: completion ids are the tokens of
//! prompt + completion after the prompt's tokens, EOS is appended, and long pairs are truncated
//! (prompt: keep the end; completions: keep the start).

use std::collections::BTreeMap;

use decpo_model::{ChatMessage, LlamaTokenizer};

use crate::error::{DataError, Result};
use crate::pair::{PreferencePair, Turns};
use crate::template::Template;

/// Lengths and special ids for tokenization.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenizeConfig {
    /// Longest prompt kept when a pair is too long (its end is kept).
    pub max_prompt_length: usize,
    /// Longest prompt + completion (completions keep their start).
    pub max_length: usize,
    /// Appended to completions that do not already end with it.
    pub eos_id: u32,
    /// How text pairs are laid out before tokenizing ([`Template::resolve`]d).
    pub template: Template,
}

/// A tokenized pair, after truncation. `chosen_ids`/`rejected_ids` end with EOS unless truncated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizedPair {
    /// Where the pair came from ([`PreferencePair::source`]).
    pub source: String,
    /// The prompt as the data gives it, before any template and truncation (chat turns as
    /// `role: content` lines; one user turn as its text): what a judge is shown.
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

impl TokenizedPair {
    /// The prompt's ids, `None` when it is empty: what makes two pairs "the same prompt" (see
    /// [`crate::first_distinct`]).
    pub fn prompt_key(&self) -> Option<&[u32]> {
        (!self.prompt_ids.is_empty()).then_some(self.prompt_ids.as_slice())
    }

    /// Length of the longer of the two rows.
    pub fn max_len(&self) -> usize {
        self.prompt_ids.len() + self.chosen_ids.len().max(self.rejected_ids.len())
    }
}

/// What tokenization did to a set of pairs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizeReport {
    /// Pairs whose prompt tokens are not a prefix of prompt + completion tokens (kept; the
    /// completion is cut at the prompt's token count).
    pub prompt_not_token_prefix: usize,
    pub prompt_truncated: usize,
    pub completion_truncated: usize,
    /// Pairs dropped, by reason.
    pub dropped: BTreeMap<String, usize>,
}

/// Renders a pair to (prompt, chosen, rejected) text; chat turns go through the chat template,
/// the completion being what the template adds after the generation prompt, up to the end of
/// turn when that is the EOS token (SmolLM2's `<|im_end|>`; the template's `\n` after it is left
/// out, so the completion ends with the token generation stops at, and no second EOS is appended
/// after a line break as TRL does).
pub fn render(tok: &LlamaTokenizer, pair: &PreferencePair) -> Result<(String, String, String)> {
    let err = |e: decpo_model::ModelError| DataError::Tokenizer(format!("{}: {e}", pair.source));
    match (&pair.prompt, &pair.chosen, &pair.rejected) {
        (Turns::Text(p), Turns::Text(c), Turns::Text(r)) => Ok((p.clone(), c.clone(), r.clone())),
        (Turns::Chat(p), Turns::Chat(c), Turns::Chat(r)) => {
            let prompt = tok.apply_chat_template(p, true).map_err(err)?;
            let full = |rest: &[ChatMessage]| -> Result<String> {
                let all: Vec<ChatMessage> = p.iter().chain(rest).cloned().collect();
                let text = tok.apply_chat_template(&all, false).map_err(err)?;
                let text = match tok.eos_token.as_deref() {
                    Some(eos) if text.trim_end().ends_with(eos) => text.trim_end(),
                    _ => text.as_str(),
                };
                text.strip_prefix(&prompt).map(String::from).ok_or_else(|| {
                    DataError::Tokenizer(format!(
                        "{}: the chat template does not render the prompt as a prefix of the conversation",
                        pair.source
                    ))
                })
            };
            let (chosen, rejected) = (full(c)?, full(r)?);
            Ok((prompt, chosen, rejected))
        }
        _ => Err(DataError::Tokenizer(format!(
            "{}: prompt and completions must all be text or all be messages",
            pair.source
        ))),
    }
}

/// Turns as a reader sees them, without a chat template's markup: a text as it is, one user turn
/// as its text, several turns as `role: content` lines.
pub fn plain_text(turns: &Turns) -> String {
    match turns {
        Turns::Text(t) => t.clone(),
        Turns::Chat(m) if m.len() == 1 && m[0].role == "user" => m[0].content.clone(),
        Turns::Chat(m) => m
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Tokenizes `pairs` in order; pairs that cannot fit are dropped and counted in the report.
pub fn tokenize_pairs(
    tok: &LlamaTokenizer,
    pairs: &[PreferencePair],
    config: &TokenizeConfig,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<TokenizedPair>, TokenizeReport)> {
    let mut report = TokenizeReport::default();
    let mut out = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        let (prompt, chosen, rejected) = render(tok, &config.template.apply(pair))?;
        let enc = |text: &str| {
            tok.encode(text, true)
                .map_err(|e| DataError::Tokenizer(format!("{}: {e}", pair.source)))
        };
        let prompt_ids = enc(&prompt)?;
        let mut prefix_ok = true;
        let mut completion = |text: &str| -> Result<Vec<u32>> {
            let full = enc(&format!("{prompt}{text}"))?;
            prefix_ok &= full.starts_with(&prompt_ids);
            let mut ids = full.get(prompt_ids.len()..).unwrap_or_default().to_vec();
            if ids.last() != Some(&config.eos_id) {
                ids.push(config.eos_id);
            }
            Ok(ids)
        };
        let chosen_ids = completion(&chosen)?;
        let rejected_ids = completion(&rejected)?;
        if !prefix_ok {
            report.prompt_not_token_prefix += 1;
        }
        if let Some(t) = truncate(
            TokenizedPair {
                source: pair.source.clone(),
                prompt_text: plain_text(&pair.prompt),
                prompt_ids,
                chosen_ids,
                rejected_ids,
            },
            config,
            &mut report,
        ) {
            out.push(t);
        }
        progress(i + 1);
    }
    Ok((out, report))
}

fn truncate(
    mut t: TokenizedPair,
    c: &TokenizeConfig,
    report: &mut TokenizeReport,
) -> Option<TokenizedPair> {
    if t.max_len() <= c.max_length {
        return Some(t);
    }
    if t.prompt_ids.len() > c.max_prompt_length {
        t.prompt_ids
            .drain(..t.prompt_ids.len() - c.max_prompt_length);
        report.prompt_truncated += 1;
    }
    if t.prompt_ids.len() >= c.max_length {
        *report
            .dropped
            .entry("prompt_fills_max_length".into())
            .or_default() += 1;
        return None;
    }
    if t.max_len() > c.max_length {
        let room = c.max_length - t.prompt_ids.len();
        t.chosen_ids.truncate(room);
        t.rejected_ids.truncate(room);
        report.completion_truncated += 1;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_text_leaves_the_template_out() {
        let user = |t: &str| ChatMessage::new("user", t);
        assert_eq!(plain_text(&Turns::Text(" as is\n".into())), " as is\n");
        assert_eq!(plain_text(&Turns::Chat(vec![user("Hi")])), "Hi");
        let dialogue = vec![
            user("Hi"),
            ChatMessage::new("assistant", "Hello."),
            user("Bye"),
        ];
        assert_eq!(
            plain_text(&Turns::Chat(dialogue)),
            "user: Hi\nassistant: Hello.\nuser: Bye"
        );
    }

    use super::*;

    fn pair(p: usize, c: usize, r: usize) -> TokenizedPair {
        TokenizedPair {
            source: "test".into(),
            prompt_text: String::new(),
            prompt_ids: (0..p as u32).collect(),
            chosen_ids: (100..100 + c as u32).collect(),
            rejected_ids: (200..200 + r as u32).collect(),
        }
    }

    #[test]
    fn truncation_keeps_prompt_end_and_completion_start() {
        let c = TokenizeConfig {
            max_prompt_length: 4,
            max_length: 8,
            eos_id: 2,
            template: Template::Raw,
        };
        let mut report = TokenizeReport::default();
        assert_eq!(
            truncate(pair(3, 5, 2), &c, &mut report),
            Some(pair(3, 5, 2))
        );
        let t = truncate(pair(6, 7, 1), &c, &mut report).unwrap();
        assert_eq!(t.prompt_ids, vec![2, 3, 4, 5]);
        assert_eq!(t.chosen_ids, vec![100, 101, 102, 103]);
        assert_eq!(t.rejected_ids, vec![200]);
        assert_eq!(
            (report.prompt_truncated, report.completion_truncated),
            (1, 1)
        );
        let c = TokenizeConfig {
            max_prompt_length: 10,
            ..c
        };
        assert_eq!(truncate(pair(9, 1, 1), &c, &mut report), None);
        assert_eq!(report.dropped["prompt_fills_max_length"], 1);
    }
}
