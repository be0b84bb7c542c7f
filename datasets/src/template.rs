//! How a pair's text is laid out for the model: `chat` (the model's chat template: the prompt as
//! the user's turn, each completion as the assistant's), `plain` (prompt and completion joined,
//! with a line break where neither side brings whitespace) or `raw` (joined as the file has them).
//! Pairs already made of chat messages are rendered by the chat template in every layout.

use decpo_model::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::pair::{ASSISTANT_MARKER, PreferencePair, Turns};

/// The layout of text pairs (`[data] template`, `--template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// `chat` when the model has a chat template, else `raw`.
    #[default]
    Auto,
    Chat,
    Plain,
    Raw,
}

/// What `plain` puts between a prompt and its completions when neither side has whitespace there.
pub const PLAIN_SEPARATOR: &str = "\n";

/// The marker starting a human turn in Anthropic-style dialogues.
const HUMAN_MARKER: &str = "\n\nHuman:";

impl Template {
    /// `Auto` made definite: `Chat` if the model has a chat template, else `Raw`.
    pub fn resolve(self, has_chat_template: bool) -> Self {
        match self {
            Template::Auto if has_chat_template => Template::Chat,
            Template::Auto => Template::Raw,
            t => t,
        }
    }

    /// `pair` laid out in this template (`Auto` counts as `Raw`: resolve it first).
    pub fn apply(self, pair: &PreferencePair) -> PreferencePair {
        let (Turns::Text(p), Turns::Text(c), Turns::Text(r)) =
            (&pair.prompt, &pair.chosen, &pair.rejected)
        else {
            return pair.clone();
        };
        let with = |prompt, chosen, rejected| PreferencePair {
            source: pair.source.clone(),
            prompt,
            chosen,
            rejected,
        };
        match self {
            Template::Auto | Template::Raw => pair.clone(),
            Template::Plain => {
                let bare = |s: &str| !s.starts_with(char::is_whitespace);
                let sep = !p.is_empty() && !p.ends_with(char::is_whitespace) && bare(c) && bare(r);
                let prompt = if sep {
                    format!("{p}{PLAIN_SEPARATOR}")
                } else {
                    p.clone()
                };
                with(
                    Turns::Text(prompt),
                    Turns::Text(c.clone()),
                    Turns::Text(r.clone()),
                )
            }
            Template::Chat => {
                let reply = |s: &str| Turns::Chat(vec![ChatMessage::new("assistant", s.trim())]);
                with(Turns::Chat(prompt_messages(p)), reply(c), reply(r))
            }
        }
    }
}

/// A prompt as chat messages: an Anthropic dialogue (`\n\nHuman: … \n\nAssistant: … \n\nHuman:
/// … \n\nAssistant:`) turn by turn, anything else as one user message.
fn prompt_messages(prompt: &str) -> Vec<ChatMessage> {
    let dialogue = prompt.trim_start();
    let Some(rest) = dialogue
        .strip_prefix(HUMAN_MARKER.trim_start())
        .and_then(|r| r.strip_suffix(ASSISTANT_MARKER))
    else {
        return vec![ChatMessage::new("user", prompt.trim())];
    };
    // Turns alternate: human, assistant, human, ...
    let mut messages = Vec::new();
    let mut role = "user";
    let mut text = rest;
    loop {
        let marker = if role == "user" {
            ASSISTANT_MARKER
        } else {
            HUMAN_MARKER
        };
        match text.find(marker) {
            Some(i) => {
                messages.push(ChatMessage::new(role, text[..i].trim()));
                text = &text[i + marker.len()..];
                role = if role == "user" { "assistant" } else { "user" };
            }
            None => {
                messages.push(ChatMessage::new(role, text.trim()));
                break;
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_pair(p: &str, c: &str, r: &str) -> PreferencePair {
        PreferencePair {
            source: "t".into(),
            prompt: Turns::Text(p.into()),
            chosen: Turns::Text(c.into()),
            rejected: Turns::Text(r.into()),
        }
    }

    fn texts(pair: &PreferencePair) -> (String, String, String) {
        match (&pair.prompt, &pair.chosen, &pair.rejected) {
            (Turns::Text(p), Turns::Text(c), Turns::Text(r)) => (p.clone(), c.clone(), r.clone()),
            _ => panic!("expected text"),
        }
    }

    #[test]
    fn plain_separates_only_where_neither_side_has_whitespace() {
        // cognitive-reframing: "…date with me" + "This girl…" ran together before.
        let p = Template::Plain.apply(&text_pair("a date with me", "This girl", "I am"));
        assert_eq!(texts(&p).0, "a date with me\n");
        // hh-rlhf and sycophancy completions start with a space; a prompt may end with one.
        for (prompt, c, r) in [
            ("Human: hi\n\nAssistant:", " Sure.", " No."),
            ("Question?\n\nAnswer:", " (A)", "(B)"),
            ("ends in a space ", "x", "y"),
        ] {
            let pair = text_pair(prompt, c, r);
            assert_eq!(Template::Plain.apply(&pair), pair);
        }
        let pair = text_pair("p", "c", "r");
        assert_eq!(Template::Raw.apply(&pair), pair);
        assert_eq!(Template::Auto.resolve(false), Template::Raw);
        assert_eq!(Template::Auto.resolve(true), Template::Chat);
        assert_eq!(Template::Plain.resolve(true), Template::Plain);
    }

    #[test]
    fn chat_makes_the_prompt_the_user_turn_and_dialogues_their_turns() {
        let msg = |role: &str, text: &str| ChatMessage::new(role, text);
        let p = Template::Chat.apply(&text_pair("My situation.", "This girl", " I am "));
        assert_eq!(p.prompt, Turns::Chat(vec![msg("user", "My situation.")]));
        assert_eq!(p.chosen, Turns::Chat(vec![msg("assistant", "This girl")]));
        assert_eq!(p.rejected, Turns::Chat(vec![msg("assistant", "I am")]));
        let hh = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:";
        let p = Template::Chat.apply(&text_pair(hh, " Sure.", " No."));
        assert_eq!(
            p.prompt,
            Turns::Chat(vec![
                msg("user", "hi there"),
                msg("assistant", "hello"),
                msg("user", "help?")
            ])
        );
        assert_eq!(p.chosen, Turns::Chat(vec![msg("assistant", "Sure.")]));
        // Chat pairs stay as they are.
        let chat = PreferencePair {
            prompt: Turns::Chat(vec![msg("user", "q")]),
            ..text_pair("", "a", "b")
        };
        let chat = PreferencePair {
            chosen: Turns::Chat(vec![msg("assistant", "a")]),
            rejected: Turns::Chat(vec![msg("assistant", "b")]),
            ..chat
        };
        assert_eq!(Template::Plain.apply(&chat), chat);
    }
}
