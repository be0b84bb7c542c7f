//! `PreferencePair`: one (prompt, chosen, rejected) triple, as text or as chat messages.

use decpo_model::ChatMessage;

/// Text, or a list of chat messages to be rendered with the model's chat template.
#[derive(Debug, Clone, PartialEq)]
pub enum Turns {
    Text(String),
    Chat(Vec<ChatMessage>),
}

impl Turns {
    pub(crate) fn is_blank(&self) -> bool {
        match self {
            Turns::Text(t) => t.trim().is_empty(),
            Turns::Chat(m) => m.iter().all(|m| m.content.trim().is_empty()),
        }
    }
}

/// A preference pair: for `prompt`, `chosen` is preferred to `rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// Where the pair came from, e.g. "harmless-base-test.jsonl.gz line 12".
    pub source: String,
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
}

/// Why a row does not make a valid pair. `key()` names the reason in summaries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalid {
    MissingField(String),
    WrongType {
        field: String,
        expected: &'static str,
        got: &'static str,
    },
    EmptyCompletion(&'static str),
    ChosenEqualsRejected,
    /// Implicit prompt: the two dialogues share no prefix ending in an assistant turn marker.
    NoDialoguePrefix,
    /// sycophancy-caa full-text mode: the question lists no option with this letter.
    OptionNotFound(String),
}

impl Invalid {
    pub fn key(&self) -> &'static str {
        match self {
            Invalid::MissingField(_) => "missing_field",
            Invalid::WrongType { .. } => "wrong_type",
            Invalid::EmptyCompletion(_) => "empty_completion",
            Invalid::ChosenEqualsRejected => "chosen_equals_rejected",
            Invalid::NoDialoguePrefix => "no_dialogue_prefix",
            Invalid::OptionNotFound(_) => "option_not_found",
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::MissingField(field) => write!(f, "field `{field}` is missing"),
            Invalid::WrongType {
                field,
                expected,
                got,
            } => {
                write!(f, "field `{field}` should be {expected}, got {got}")
            }
            Invalid::EmptyCompletion(side) => write!(f, "field `{side}`: the completion is empty"),
            Invalid::ChosenEqualsRejected => write!(f, "chosen and rejected are identical"),
            Invalid::NoDialoguePrefix => {
                write!(
                    f,
                    "chosen and rejected share no prompt ending in `\\n\\nAssistant:`"
                )
            }
            Invalid::OptionNotFound(letter) => {
                write!(f, "field `question` lists no option {letter}")
            }
        }
    }
}

/// The checks every pair passes, whatever its source: non-blank completions that differ.
pub(crate) fn validate(pair: PreferencePair) -> Result<PreferencePair, Invalid> {
    if pair.chosen.is_blank() {
        return Err(Invalid::EmptyCompletion("chosen"));
    }
    if pair.rejected.is_blank() {
        return Err(Invalid::EmptyCompletion("rejected"));
    }
    if pair.chosen == pair.rejected {
        return Err(Invalid::ChosenEqualsRejected);
    }
    Ok(pair)
}

/// The marker ending a prompt in Anthropic-style dialogues.
pub const ASSISTANT_MARKER: &str = "\n\nAssistant:";

/// TRL's implicit prompt for text: the longest common prefix (in characters), cut back to end right
/// after its last `\n\nAssistant:`. Returns (prompt, chosen rest, rejected rest).
pub fn split_dialogues<'a>(
    chosen: &'a str,
    rejected: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| chosen.len().min(rejected.len()), |((i, _), _)| i);
    let end = chosen[..common].rfind(ASSISTANT_MARKER)? + ASSISTANT_MARKER.len();
    Some((&chosen[..end], &chosen[end..], &rejected[end..]))
}

/// Implicit prompt for conversations: the messages both share; the rest of each is its completion.
pub fn split_conversations(
    chosen: Vec<ChatMessage>,
    rejected: Vec<ChatMessage>,
) -> (Vec<ChatMessage>, Vec<ChatMessage>, Vec<ChatMessage>) {
    let shared = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(a, b)| a == b)
        .count();
    let prompt = chosen[..shared].to_vec();
    (
        prompt,
        chosen[shared..].to_vec(),
        rejected[shared..].to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dialogue_prompt_ends_after_the_last_shared_assistant_marker() {
        let c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, here.";
        let r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No.";
        let (p, a, b) = split_dialogues(c, r).unwrap();
        assert_eq!(
            p,
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:"
        );
        assert_eq!((a, b), (" Sure, here.", " No."));
        assert_eq!(split_dialogues("Human: a", "Human: b"), None);
    }

    proptest! {
        /// Whatever the texts, prompt + rest reassembles each side, the prompt ends with the marker,
        /// and slicing never lands inside a multi-byte character.
        #[test]
        fn split_reassembles(prefix in "\\PC{0,20}", a in "\\PC{0,20}", b in "\\PC{0,20}") {
            let c = format!("{prefix}{ASSISTANT_MARKER}{a}");
            let r = format!("{prefix}{ASSISTANT_MARKER}{b}");
            let (p, ca, rb) = split_dialogues(&c, &r).unwrap();
            prop_assert_eq!(format!("{p}{ca}"), c.clone());
            prop_assert_eq!(format!("{p}{rb}"), r.clone());
            prop_assert!(p.ends_with(ASSISTANT_MARKER));
        }
    }
}
