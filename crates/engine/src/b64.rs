//! Byte fields of the sealed session state as base64 text.
//!
//! The server keeps a session's engine state sealed in the store and reads
//! and writes it on every relay. serde writes a `Vec<u8>` as an array of
//! numbers: in JSON about 3.6 characters per byte and a number to parse for
//! each, and the PIV state carries certificates, attestation certificates and
//! the batch's APDUs (kilobytes). As base64 it is 1.33 characters per byte and
//! one decode. State sealed before (arrays of numbers) still reads.
//!
//! Use as `#[serde(with = "crate::b64")]`, or a submodule for the shapes
//! around a byte string.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(v))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_any(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("base64 text, or an array of bytes (state sealed by earlier versions)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        B64.decode(v).map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// A byte string in a container ([`opt`], [`keyed`]).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Bytes(#[serde(with = "self")] Vec<u8>);

/// `Option<Vec<u8>>`.
pub mod opt {
    use super::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(super::Text).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Bytes>::deserialize(d)?.map(|b| b.0))
    }
}

/// `Vec<(K, Vec<u8>)>`: certificates by slot, objects by tag.
pub mod keyed {
    use super::Bytes;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, b)| (k, super::Text(b))))
    }

    pub fn deserialize<'de, K: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Vec<u8>)>, D::Error> {
        Ok(Vec::<(K, Bytes)>::deserialize(d)?
            .into_iter()
            .map(|(k, b)| (k, b.0))
            .collect())
    }
}

/// A borrowed byte string written as base64 (no copy to serialise).
struct Text<'a>(&'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        #[serde(with = "super")]
        data: Vec<u8>,
        #[serde(with = "super::opt", default)]
        maybe: Option<Vec<u8>>,
        #[serde(with = "super::keyed")]
        by_slot: Vec<(u8, Vec<u8>)>,
    }

    #[test]
    fn bytes_are_base64_and_earlier_number_arrays_still_read() {
        let state = State {
            data: vec![0, 1, 2, 250, 255],
            maybe: Some(vec![9; 4]),
            by_slot: vec![(0x9a, vec![0x30, 0x82]), (0x9c, vec![])],
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            json,
            r#"{"data":"AAEC+v8","maybe":"CQkJCQ","by_slot":[[154,"MII"],[156,""]]}"#
        );
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), state);
        let earlier =
            r#"{"data":[0,1,2,250,255],"maybe":[9,9,9,9],"by_slot":[[154,[48,130]],[156,[]]]}"#;
        assert_eq!(serde_json::from_str::<State>(earlier).unwrap(), state);
        let absent = r#"{"data":"","maybe":null,"by_slot":[]}"#;
        let absent: State = serde_json::from_str(absent).unwrap();
        assert_eq!((absent.data.len(), absent.maybe), (0, None));
        assert!(serde_json::from_str::<State>(r#"{"data":"*","by_slot":[]}"#).is_err());
        assert!(serde_json::from_str::<State>(r#"{"data":[256],"by_slot":[]}"#).is_err());
    }
}
