//! Reading YAML and JSON documents into [`serde_json::Value`] the way the API server and kubectl
//! decide: a key given twice in one mapping is an error (the API server's strict decoding says
//! "duplicate field"; plain serde keeps the last one silently), and YAML merge keys (`<<: *anchor`,
//! `<<: [*a, *b]`) are applied as kubectl's YAML reader applies them: the merged mappings' keys are
//! added unless the mapping sets them itself, earlier merged mappings winning over later ones.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A document reader: `yaml` enables merge keys (in JSON `<<` is an ordinary key).
#[derive(Debug, Clone, Copy)]
pub(super) struct Strict {
    pub(super) yaml: bool,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

const MERGE_KEY: &str = "<<";

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut merged = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            if self.yaml && key == MERGE_KEY {
                match value {
                    Value::Object(m) => merged.push(m),
                    Value::Array(items) => {
                        for item in items {
                            match item {
                                Value::Object(m) => merged.push(m),
                                _ => {
                                    return Err(de::Error::custom(
                                        "merge key `<<` takes a mapping or a list of mappings",
                                    ))
                                }
                            }
                        }
                    }
                    _ => {
                        return Err(de::Error::custom(
                            "merge key `<<` takes a mapping or a list of mappings",
                        ))
                    }
                }
                continue;
            }
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?} (the API server rejects an object with a field given \
                     twice)"
                )));
            }
            out.insert(key, value);
        }
        for m in merged {
            for (k, v) in m {
                out.entry(k).or_insert(v);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(input: &str) -> Result<Vec<Value>, serde_yaml::Error> {
        serde_yaml::Deserializer::from_str(input)
            .map(|d| Strict { yaml: true }.deserialize(d))
            .collect()
    }

    fn json(input: &str) -> Result<Value, serde_json::Error> {
        Strict { yaml: false }.deserialize(&mut serde_json::Deserializer::from_str(input))
    }

    #[test]
    fn duplicate_keys_are_errors_in_yaml_and_json() {
        let e = yaml("a: 1\nb: {c: 1, c: 2}\n").unwrap_err().to_string();
        assert!(e.contains("duplicate key \"c\""), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = json(r#"{"a": 1, "a": 2}"#).unwrap_err().to_string();
        assert!(e.contains("duplicate key \"a\""), "{e}");
    }

    #[test]
    fn merge_keys_are_applied_with_own_keys_and_earlier_merges_winning() {
        let docs = yaml(
            "x: &x {name: http, port: 80, protocol: TCP}\n\
             y: &y {port: 81, extra: 1}\n\
             one: {<<: *x, name: web}\n\
             many: {<<: [*x, *y]}\n",
        )
        .unwrap();
        let d = &docs[0];
        assert_eq!(
            d["one"],
            serde_json::json!({"name": "web", "port": 80, "protocol": "TCP"})
        );
        assert_eq!(d["many"]["port"], 80);
        assert_eq!(d["many"]["extra"], 1);
        let e = yaml("a: {<<: 5}\n").unwrap_err().to_string();
        assert!(e.contains("merge key"), "{e}");
        // In JSON `<<` is an ordinary key.
        assert_eq!(json(r#"{"<<": 1}"#).unwrap()["<<"], 1);
    }

    #[test]
    fn values_of_every_kind_are_kept() {
        let d = yaml("a: [1, -2, 1.5, true, null, x]\n").unwrap();
        assert_eq!(
            d[0],
            serde_json::json!({"a": [1, -2, 1.5, true, null, "x"]})
        );
    }
}
