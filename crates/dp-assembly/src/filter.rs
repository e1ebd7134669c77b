//! `[[filter]]`: which records the default pipeline drops before they are written ahead or
//! stored, as rules on a JSON field of the value, a header or the topic.
//!
//! Rules run in order; the first that drops a record names the reason
//! (`dp_filtered_total{reason}`). A rule on a JSON field does not apply to a value that is not
//! JSON (nor to a tombstone): such a record goes on to the sink, which dead-letters or deletes
//! it as it would without filters, so a filter never hides bad input.

use dp_core::Record;
use dp_pipeline::{InvalidSetting, RecordFilter};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One `[[filter]]` rule: a subject (`pointer`, `header` or `topic`), a test (`equals`,
/// `one_of`, `exists` or `matches`) and an `action`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The reason in `dp_filtered_total{reason}`: 1-64 of `[a-z0-9_]`, unique among the rules.
    /// `filter_<i>` by default, `i` being the rule's index as in `filter[i]` (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Subject: the field of the JSON value at this pointer (`/type`, `/meta/env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Subject: the header of this name: present or not (`exists`), and its value as UTF-8
    /// text (the last one when the record has several; a value that is not UTF-8, or null,
    /// never equals or matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Subject: the topic name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub topic: bool,
    /// Test: the subject equals this value (numbers compare by value: `1` equals `1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Test: the subject equals one of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// Test: the subject is present (`true`) or absent (`false`). A JSON `null` counts as
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// Test: the subject matches this regular expression (anywhere in it; anchor with `^…$`).
    /// A JSON number or boolean is matched as written in JSON; an object or array never matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// `drop` drops the records the test matches; `keep` drops those it does not match.
    pub action: FilterAction,
}

/// What a rule does with the records its test matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Drop the records the test matches.
    #[default]
    Drop,
    /// Keep only the records the test matches; drop the others.
    Keep,
}

/// The `[[filter]]` rules, compiled: the default pipeline's [`RecordFilter`].
#[derive(Debug)]
pub struct Filters {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    reason: String,
    subject: Subject,
    test: Test,
    action: FilterAction,
}

#[derive(Debug)]
enum Subject {
    Pointer(String),
    Header(String),
    Topic,
}

#[derive(Debug)]
enum Test {
    Equals(Vec<Value>),
    Exists(bool),
    Matches(Regex),
}

impl Filters {
    /// Compiles the rules; `None` when there are none. The error names the rule's key
    /// (`filter[1].matches`) and what is wrong.
    pub fn compile(rules: &[FilterConfig]) -> Result<Option<Self>, InvalidSetting> {
        if rules.is_empty() {
            return Ok(None);
        }
        let rules: Vec<Rule> =
            rules.iter().enumerate().map(|(i, rule)| Rule::compile(i, rule)).collect::<Result<_, _>>()?;
        for (i, rule) in rules.iter().enumerate() {
            if let Some(first) = rules[..i].iter().position(|r| r.reason == rule.reason) {
                return Err(InvalidSetting::new(
                    format!("filter[{i}].name"),
                    format!("`{}` is also the name of filter[{first}]; each rule needs its own", rule.reason),
                ));
            }
        }
        Ok(Some(Self { rules }))
    }
}

impl Rule {
    fn compile(i: usize, rule: &FilterConfig) -> Result<Self, InvalidSetting> {
        let key = |field: &str| format!("filter[{i}].{field}");
        let reason = match &rule.name {
            Some(name) => {
                let valid = (1..=64).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    return Err(InvalidSetting::new(
                        key("name"),
                        format!("`{name}` must be 1-64 of [a-z0-9_] (it is a metric label)"),
                    ));
                }
                name.clone()
            }
            None => format!("filter_{i}"),
        };
        exactly_one(
            i,
            "subject",
            "pointer = \"/field\", header = \"name\" or topic = true",
            [("pointer", rule.pointer.is_some()), ("header", rule.header.is_some()), ("topic", rule.topic)],
        )?;
        let subject = match (&rule.pointer, &rule.header) {
            (Some(pointer), _) => {
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    return Err(InvalidSetting::new(
                        key("pointer"),
                        format!(
                            "`{pointer}` is not a JSON pointer: it starts with `/` (`/type`, `/meta/env`)"
                        ),
                    ));
                }
                Subject::Pointer(pointer.clone())
            }
            (None, Some(header)) => Subject::Header(header.clone()),
            (None, None) => Subject::Topic,
        };
        exactly_one(
            i,
            "test",
            "equals, one_of, exists or matches",
            [
                ("equals", rule.equals.is_some()),
                ("one_of", rule.one_of.is_some()),
                ("exists", rule.exists.is_some()),
                ("matches", rule.matches.is_some()),
            ],
        )?;
        let test = if let Some(value) = &rule.equals {
            Test::Equals(vec![value.clone()])
        } else if let Some(values) = &rule.one_of {
            if values.is_empty() {
                return Err(InvalidSetting::new(key("one_of"), "must list at least one value"));
            }
            Test::Equals(values.clone())
        } else if let Some(present) = rule.exists {
            if matches!(subject, Subject::Topic) {
                return Err(InvalidSetting::new(
                    key("exists"),
                    "every record has a topic; test it with equals, one_of or matches",
                ));
            }
            Test::Exists(present)
        } else {
            let pattern = rule.matches.as_deref().unwrap_or_default();
            let regex = Regex::new(pattern).map_err(|e| {
                InvalidSetting::new(key("matches"), format!("`{pattern}` is not a regular expression: {e}"))
            })?;
            Test::Matches(regex)
        };
        if let (Subject::Header(_) | Subject::Topic, Test::Equals(values)) = (&subject, &test)
            && values.iter().any(|v| !v.is_string())
        {
            let field = if rule.equals.is_some() { "equals" } else { "one_of" };
            return Err(InvalidSetting::new(
                key(field),
                "a header or topic is text: compare it with strings (\"42\", not 42)",
            ));
        }
        Ok(Self { reason, subject, test, action: rule.action })
    }
}

/// Checks that exactly one of the `keys` of rule `i` is set: none names the rule, two name
/// the second.
fn exactly_one<const N: usize>(
    i: usize,
    what: &str,
    choices: &str,
    keys: [(&str, bool); N],
) -> Result<(), InvalidSetting> {
    let set: Vec<&str> = keys.iter().filter(|(_, on)| *on).map(|(key, _)| *key).collect();
    match set.as_slice() {
        [_] => Ok(()),
        [] => Err(InvalidSetting::new(format!("filter[{i}]"), format!("give a {what}: {choices}"))),
        [first, second, ..] => Err(InvalidSetting::new(
            format!("filter[{i}].{second}"),
            format!("give exactly one {what}: {first} and {second} are both set"),
        )),
    }
}

impl RecordFilter for Filters {
    fn drop_reason(&self, record: &Record) -> Option<&str> {
        // Parsed once per record, and only when a rule reads a field.
        let mut document: Option<Option<Value>> = None;
        for rule in &self.rules {
            let matched = match &rule.subject {
                Subject::Pointer(pointer) => {
                    let parsed = document.get_or_insert_with(|| {
                        record.payload.as_deref().and_then(|bytes| serde_json::from_slice(bytes).ok())
                    });
                    // Not JSON, or a tombstone: the rule does not apply; the sink decides.
                    let Some(value) = parsed.as_ref() else { continue };
                    rule.test.on_json(value.pointer(pointer))
                }
                Subject::Header(name) => {
                    let header = record.headers.iter().rev().find(|h| h.name == *name);
                    match (&rule.test, header) {
                        (Test::Exists(present), header) => header.is_some() == *present,
                        (test, header) => {
                            let text = header
                                .and_then(|h| h.value.as_deref())
                                .and_then(|v| std::str::from_utf8(v).ok());
                            text.is_some() && test.on_text(text)
                        }
                    }
                }
                Subject::Topic => rule.test.on_text(Some(&record.topic)),
            };
            let drop = match rule.action {
                FilterAction::Drop => matched,
                FilterAction::Keep => !matched,
            };
            if drop {
                return Some(&rule.reason);
            }
        }
        None
    }
}

impl Test {
    fn on_json(&self, field: Option<&Value>) -> bool {
        let field = field.filter(|v| !v.is_null());
        match self {
            Self::Equals(values) => field.is_some_and(|f| values.iter().any(|v| json_equal(f, v))),
            Self::Exists(present) => field.is_some() == *present,
            Self::Matches(regex) => match field {
                Some(Value::String(s)) => regex.is_match(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => regex.is_match(&v.to_string()),
                _ => false,
            },
        }
    }

    fn on_text(&self, text: Option<&str>) -> bool {
        match self {
            Self::Equals(values) => text.is_some_and(|t| values.iter().any(|v| v.as_str() == Some(t))),
            Self::Exists(present) => text.is_some() == *present,
            Self::Matches(regex) => text.is_some_and(|t| regex.is_match(t)),
        }
    }
}

/// JSON equality, with numbers compared by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use dp_core::Header;

    use super::*;

    fn rules(toml_rules: &str) -> Filters {
        #[derive(Deserialize)]
        struct File {
            filter: Vec<FilterConfig>,
        }
        let file: File = toml::from_str(toml_rules).expect("valid TOML");
        Filters::compile(&file.filter).expect("valid rules").expect("some rules")
    }

    fn record(topic: &str, payload: &str) -> Record {
        Record::new(topic, 0, 0, Some(payload.as_bytes().to_vec()))
    }

    #[test]
    fn drop_rules_on_fields_drop_what_they_match_and_name_their_reason() {
        let f = rules(
            r#"
            [[filter]]
            name = "test_events"
            pointer = "/meta/test"
            equals = true
            action = "drop"

            [[filter]]
            pointer = "/status"
            one_of = ["DRAFT", "CANCELLED"]
            action = "drop"

            [[filter]]
            pointer = "/carrier"
            matches = "^internal-"
            action = "drop"

            [[filter]]
            pointer = "/priority"
            equals = 2
            action = "drop"
            "#,
        );
        assert_eq!(f.drop_reason(&record("t", r#"{"meta":{"test":true}}"#)), Some("test_events"));
        assert_eq!(f.drop_reason(&record("t", r#"{"meta":{"test":false}}"#)), None);
        assert_eq!(f.drop_reason(&record("t", r#"{"status":"CANCELLED"}"#)), Some("filter_1"));
        assert_eq!(f.drop_reason(&record("t", r#"{"status":"DELIVERED"}"#)), None);
        assert_eq!(f.drop_reason(&record("t", r#"{"carrier":"internal-qa"}"#)), Some("filter_2"));
        assert_eq!(f.drop_reason(&record("t", r#"{"carrier":"dhl-internal-"}"#)), None);
        assert_eq!(f.drop_reason(&record("t", r#"{"priority":2.0}"#)), Some("filter_3"), "numbers by value");
        assert_eq!(f.drop_reason(&record("t", r#"{"priority":"2"}"#)), None, "a string is not a number");
        // The first rule that drops names the reason.
        assert_eq!(
            f.drop_reason(&record("t", r#"{"meta":{"test":true},"status":"DRAFT"}"#)),
            Some("test_events")
        );
    }

    #[test]
    fn keep_rules_drop_what_they_do_not_match_and_exists_treats_null_as_absent() {
        let f = rules(
            r#"
            [[filter]]
            name = "no_tracking_id"
            pointer = "/tracking_id"
            exists = true
            action = "keep"
            "#,
        );
        assert_eq!(f.drop_reason(&record("t", r#"{"tracking_id":"T1"}"#)), None);
        assert_eq!(f.drop_reason(&record("t", r#"{"tracking_id":null}"#)), Some("no_tracking_id"));
        assert_eq!(f.drop_reason(&record("t", r#"{}"#)), Some("no_tracking_id"));
    }

    #[test]
    fn a_field_rule_never_drops_what_is_not_json_so_the_sink_still_dead_letters_it() {
        let f = rules(
            r#"
            [[filter]]
            pointer = "/type"
            equals = "scan"
            action = "keep"
            "#,
        );
        assert_eq!(f.drop_reason(&record("t", "not json")), None);
        assert_eq!(f.drop_reason(&Record::new("t", 0, 0, None)), None, "a tombstone");
        assert_eq!(f.drop_reason(&record("t", r#"{"type":"label"}"#)), Some("filter_0"));
    }

    #[test]
    fn header_and_topic_rules_test_text() {
        let f = rules(
            r#"
            [[filter]]
            name = "replayed"
            header = "x-replay"
            exists = true
            action = "drop"

            [[filter]]
            name = "sandbox"
            topic = true
            matches = "^sandbox\\."
            action = "drop"

            [[filter]]
            name = "other_source"
            header = "source"
            one_of = ["scanner", "app"]
            action = "keep"
            "#,
        );
        let with = |name: &str, value: &[u8]| {
            let mut r = record("events", "{}");
            r.headers.push(Header { name: "source".into(), value: Some(b"old".to_vec()) });
            r.headers.push(Header { name: name.into(), value: Some(value.to_vec()) });
            r
        };
        assert_eq!(f.drop_reason(&with("x-replay", b"1")), Some("replayed"));
        assert_eq!(
            f.drop_reason(&with("x-replay", &[0xff])),
            Some("replayed"),
            "present, whatever its value"
        );
        let mut null_valued = record("events", "{}");
        null_valued.headers.push(Header { name: "x-replay".into(), value: None });
        assert_eq!(f.drop_reason(&null_valued), Some("replayed"), "present with a null value");
        assert_eq!(f.drop_reason(&record("sandbox.events", "{}")), Some("sandbox"));
        assert_eq!(f.drop_reason(&with("source", b"scanner")), None, "the last header of a name counts");
        assert_eq!(f.drop_reason(&with("source", b"crm")), Some("other_source"));
        assert_eq!(
            f.drop_reason(&with("source", &[0xff, 0xfe])),
            Some("other_source"),
            "not UTF-8: no match"
        );
        assert_eq!(f.drop_reason(&record("events", "{}")), Some("other_source"), "no such header");
    }

    #[test]
    fn each_invalid_rule_names_its_key() {
        let cases = [
            ("filter[0]", "equals = 1\naction = \"drop\""),
            ("filter[0].topic", "pointer = \"/a\"\ntopic = true\nequals = 1\naction = \"drop\""),
            ("filter[0].topic", "header = \"h\"\ntopic = true\nequals = \"x\"\naction = \"drop\""),
            ("filter[0].pointer", "pointer = \"a\"\nequals = 1\naction = \"drop\""),
            ("filter[0]", "pointer = \"/a\"\naction = \"drop\""),
            ("filter[0].exists", "pointer = \"/a\"\nequals = 1\nexists = true\naction = \"drop\""),
            ("filter[0].one_of", "pointer = \"/a\"\none_of = []\naction = \"drop\""),
            ("filter[0].matches", "pointer = \"/a\"\nmatches = \"(\"\naction = \"drop\""),
            ("filter[0].exists", "topic = true\nexists = true\naction = \"drop\""),
            ("filter[0].equals", "header = \"h\"\nequals = 42\naction = \"drop\""),
            ("filter[0].name", "name = \"Test Events\"\npointer = \"/a\"\nequals = 1\naction = \"drop\""),
        ];
        for (key, rule) in cases {
            let file: toml::Table = toml::from_str(&format!("[[filter]]\n{rule}")).expect("TOML");
            let rules: Vec<FilterConfig> =
                file["filter"].clone().try_into().unwrap_or_else(|e| panic!("{rule}: {e}"));
            let err = Filters::compile(&rules).expect_err(rule);
            assert_eq!(err.key, key, "{rule}: {err}");
        }
    }

    #[test]
    fn two_rules_of_one_name_are_refused_defaults_included() {
        let rule = |name: Option<&str>| FilterConfig {
            name: name.map(str::to_owned),
            topic: true,
            equals: Some(Value::String("t".into())),
            ..FilterConfig::default()
        };
        let err = Filters::compile(&[rule(Some("a")), rule(Some("a"))]).expect_err("same name");
        assert_eq!(err.key, "filter[1].name");
        let err = Filters::compile(&[rule(None), rule(Some("filter_0"))]).expect_err("a default's name");
        assert_eq!(err.key, "filter[1].name");
        assert!(Filters::compile(&[rule(None), rule(None)]).is_ok(), "defaults differ by index");
    }

    #[test]
    fn a_rule_without_an_action_is_refused_when_read() {
        let e = toml::from_str::<toml::Table>("[[filter]]\npointer = \"/a\"\nequals = 1")
            .expect("TOML")["filter"]
            .clone()
            .try_into::<Vec<FilterConfig>>()
            .expect_err("no action");
        assert!(e.to_string().contains("action"), "{e}");
    }
}
