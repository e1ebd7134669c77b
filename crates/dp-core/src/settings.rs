//! Serde helpers shared by the configuration sections of every crate.

use serde::{Deserialize, Deserializer};

/// Accepts a list, or one comma-separated string (as environment variables give:
/// `DP_KAFKA__TOPICS=a,b`). Empty items are dropped.
pub fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        Either::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct S {
        #[serde(deserialize_with = "super::string_or_list")]
        v: Vec<String>,
    }

    #[test]
    fn lists_and_comma_separated_strings_give_the_same_items() {
        let list: S = serde_json::from_str(r#"{"v":["a","b"]}"#).expect("list");
        let text: S = serde_json::from_str(r#"{"v":" a, ,b "}"#).expect("text");
        assert_eq!(list.v, ["a", "b"]);
        assert_eq!(text.v, list.v);
    }
}
