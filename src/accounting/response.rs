//! Accounting's single pass over a complete (non-streamed) JSON response body.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::Usage;

/// The parts of a response body that accounting needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseSummary {
    /// The provider's `usage` object, when it sent one.
    pub usage: Option<Usage>,
    /// Whether the body carries a non-null `error` field, as some providers send with status 200.
    pub is_error: bool,
    /// The joined message or text of every choice. Filled only when `usage` is missing, because it
    /// serves only the token estimate.
    pub text: String,
}

/// The fields read by the fast path. Everything else is skipped without being built, and the
/// choices are kept as raw text until a missing `usage` makes their text needed.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    usage: Option<Object<UsageCounts>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
}

/// A `usage` object's counts. A count that is not an integer fails this typed parse, and the
/// generic parse then reads it as [`Usage::from_value`] does.
#[derive(Deserialize)]
struct UsageCounts {
    #[serde(default)]
    prompt_tokens: Option<i64>,
    #[serde(default)]
    completion_tokens: Option<i64>,
    #[serde(default)]
    total_tokens: Option<i64>,
    #[serde(default)]
    prompt_tokens_details: Option<Object<Details>>,
    #[serde(default)]
    completion_tokens_details: Option<Object<Details>>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<i64>,
    #[serde(default)]
    reasoning_tokens: Option<i64>,
}

impl UsageCounts {
    fn usage(&self) -> Usage {
        Usage::from_counts([
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.prompt_tokens_details.as_ref().and_then(|d| d.0.cached_tokens),
            self.completion_tokens_details.as_ref().and_then(|d| d.0.reasoning_tokens),
        ])
    }
}

/// A `T` read only from a JSON object. Derived structs also accept an array of their fields in
/// order, which the generic parse would not read as counts.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

impl ResponseSummary {
    /// Reads a response body. A body that is not JSON gives the default: no usage, no error.
    pub fn read(body: &[u8]) -> ResponseSummary {
        // A field of an unexpected type, such as a `choices` that is not a list, fails the typed
        // parse. The generic parse still finds the fields that are there.
        serde_json::from_slice::<Body>(body)
            .ok()
            .and_then(Self::from_body)
            .unwrap_or_else(|| match serde_json::from_slice::<Value>(body) {
                Ok(value) => Self::from_value(&value),
                Err(_) => ResponseSummary::default(),
            })
    }

    /// Builds the summary from the typed parse. Returns `None` when the text is needed and the
    /// choices are not a list of choice objects.
    fn from_body(body: Body<'_>) -> Option<ResponseSummary> {
        let usage = body.usage.as_ref().map(|counts| counts.0.usage());
        let text = match (usage, body.choices) {
            (None, Some(raw)) => serde_json::from_str::<Vec<Choice>>(raw.get())
                .ok()?
                .into_iter()
                .filter_map(|choice| choice.message.and_then(|m| m.content).or(choice.text))
                .collect(),
            _ => String::new(),
        };
        Some(ResponseSummary { usage, is_error: body.error.is_some(), text })
    }

    fn from_value(value: &Value) -> ResponseSummary {
        let usage = value.get("usage").and_then(Usage::from_value);
        let text = match (usage, value.get("choices").and_then(Value::as_array)) {
            (None, Some(choices)) => choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").or_else(|| c.get("text")).and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
        ResponseSummary { usage, is_error: value.get("error").is_some_and(|e| !e.is_null()), text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_response_gives_usage_and_no_text() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],
            "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let summary = ResponseSummary::read(body);
        assert_eq!(summary.usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((5, 2, 7)));
        assert!(!summary.is_error);
        assert_eq!(summary.text, "", "the text is only needed without usage");
    }

    #[test]
    fn missing_usage_joins_choice_texts() {
        let chat = br#"{"choices":[{"message":{"content":"Hello"}},{"message":{"content":" there"}}]}"#;
        assert_eq!(ResponseSummary::read(chat).text, "Hello there");
        let completion = br#"{"choices":[{"text":"abc"}],"usage":null}"#;
        let summary = ResponseSummary::read(completion);
        assert_eq!(summary.usage, None);
        assert_eq!(summary.text, "abc");
    }

    #[test]
    fn error_field_detected_unless_null() {
        assert!(ResponseSummary::read(br#"{"error":{"message":"overloaded"}}"#).is_error);
        assert!(ResponseSummary::read(br#"{"error":"overloaded"}"#).is_error);
        assert!(!ResponseSummary::read(br#"{"error":null,"choices":[]}"#).is_error);
    }

    #[test]
    fn unexpected_shapes_fall_back_to_the_generic_parse() {
        // `choices` is not a list: the typed parse fails, and the usage is still read.
        let body = br#"{"choices":{"0":"x"},"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        assert_eq!(ResponseSummary::read(body).usage.map(|u| u.total_tokens), Some(4));
        let null_content = br#"{"choices":[{"message":{"content":null}},{"message":{"content":"ok"}}],"error":"x"}"#;
        let summary = ResponseSummary::read(null_content);
        assert_eq!(summary.text, "ok");
        assert!(summary.is_error);
    }

    #[test]
    fn typed_usage_matches_generic_parse() {
        let usages = [
            r#"{"prompt_tokens":14,"completion_tokens":12,"total_tokens":26}"#,
            r#"{"prompt_tokens":14,"completion_tokens":12,"prompt_tokens_details":{"cached_tokens":8,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":5}}"#,
            r#"{"prompt_tokens":-3,"completion_tokens":null,"total_tokens":0}"#,
            r#"{"prompt_tokens":2.5,"completion_tokens":1}"#,
            r#"{"prompt_tokens":"7","completion_tokens":1,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#,
            r#"{}"#,
            r#"null"#,
            r#"[1,2]"#,
            r#"{"prompt_tokens":3,"prompt_tokens_details":[5]}"#,
        ];
        for usage in usages {
            let body = format!(r#"{{"choices":[{{"message":{{"content":"x"}}}}],"usage":{usage}}}"#);
            let expected = Usage::from_value(&serde_json::from_str(usage).unwrap());
            assert_eq!(ResponseSummary::read(body.as_bytes()).usage, expected, "usage {usage}");
        }
    }

    #[test]
    fn not_json_gives_nothing() {
        assert_eq!(ResponseSummary::read(b"<html>bad gateway</html>"), ResponseSummary::default());
        assert_eq!(ResponseSummary::read(b""), ResponseSummary::default());
    }

    #[test]
    fn embeddings_vectors_are_skipped() {
        let body = br#"{"object":"list","data":[{"embedding":[0.1,-0.2,0.3],"index":0}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        let summary = ResponseSummary::read(body);
        assert_eq!(summary.usage.map(|u| u.total_tokens), Some(4));
        assert!(!summary.is_error);
    }
}
