//! [`first_duplicate_key`]: JSON objects with a repeated key are refused, not read "last one
//! wins" (a validator and the reader would disagree on what was sent).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The path of the first key that appears twice in one object of `json` (e.g. `data.title`),
/// or `None`. Invalid JSON also returns `None`: the parser that follows reports it.
pub fn first_duplicate_key(json: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let mut path = Vec::new();
    (Walk { path: &mut path }).deserialize(&mut de).ok().flatten()
}

/// Walks one JSON value; returns the first duplicate's path found in it.
struct Walk<'p> {
    path: &'p mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut index = 0usize;
        loop {
            self.path.push(format!("[{index}]"));
            let found = seq.next_element_seed(Walk { path: self.path })?;
            self.path.pop();
            match found {
                None => return Ok(None),
                Some(Some(dup)) => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Some(dup));
                }
                Some(None) => index += 1,
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if found.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            self.path.push(key.clone());
            if keys.contains(&key) {
                found = Some(self.path.join(".").replace(".[", "["));
                map.next_value::<IgnoredAny>()?;
            } else {
                found = map.next_value_seed(Walk { path: self.path })?;
                keys.push(key);
            }
            self.path.pop();
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::first_duplicate_key;

    #[test]
    fn finds_repeated_keys_at_any_depth() {
        assert_eq!(first_duplicate_key(r#"{"a":1,"b":2}"#), None);
        assert_eq!(first_duplicate_key(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            first_duplicate_key(r#"{"data":{"x":[{"k":1},{"k":1,"k":2}]}}"#).as_deref(),
            Some("data.x[1].k")
        );
        assert_eq!(
            first_duplicate_key(r#"[{"a":1},{"b":{"c":1,"c":1}}]"#).as_deref(),
            Some("[1].b.c")
        );
        assert_eq!(first_duplicate_key("not json"), None);
    }
}
