//! Strict JSON: one pass over the bytes that refuses a key repeated in any object, at any depth.
//!
//! serde_json keeps the LAST value of a repeated map key (`{"admin":"1d","admin":"3650d"}` is
//! 3650d) and another parser may keep the first, so a signed payload with a repeated key means
//! different things to different readers. Every envelope and every verified payload goes through
//! [`check`] before it is interpreted; keys are compared after JSON unescaping (`"a"` and
//! `"\u0061"` are the same key).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

/// Walks one JSON value, refusing repeated object keys.
struct NoDuplicateKeys;

impl<'de> DeserializeSeed<'de> for NoDuplicateKeys {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicateKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.contains(&key) {
                return Err(A::Error::custom(format!(
                    "duplicate key `{}`",
                    super::short(&key)
                )));
            }
            map.next_value_seed(NoDuplicateKeys)?;
            seen.insert(key);
        }
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes (unescaped otherwise).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Checks that `bytes` is one JSON value in which no object repeats a key. The error names the
/// key and the position.
pub fn check(bytes: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    NoDuplicateKeys.deserialize(&mut de)?;
    de.end()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth_and_after_unescaping() {
        assert!(check(br#"{"a":1,"b":{"c":[{"d":1,"e":2}]}}"#).is_ok());
        assert!(check(br#"[1,"x",null,true,1.5,-3]"#).is_ok());
        assert!(check(br#"{"a":{"x":1},"b":{"x":1}}"#).is_ok());
        for bad in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":{"b":1,"b":2}}"#,
            r#"[{"k":[{"z":1,"z":1}]}]"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let e = check(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("duplicate key"), "{bad}: {e}");
        }
        assert!(check(br#"{"a":1} {"a":1}"#).is_err());
        assert!(check(b"{").is_err());
    }
}
