//! BER-TLV (ISO/IEC 7816-4 annex D, as PIV uses it).
//!
//! Tags are kept as their big-endian byte value (`0x5FC105`, `0x7F49`,
//! `0x53`), which is how PIV and Yubico document them. Lengths use the short
//! form below 128 and `81`/`82`/`83` long forms above.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlvError {
    #[error("TLV truncated")]
    Truncated,
    #[error("TLV tag longer than 4 bytes")]
    TagTooLong,
    #[error("TLV length form not supported")]
    BadLength,
}

/// One decoded TLV borrowing its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u32,
    pub value: &'a [u8],
}

/// Append the encoding of `tag` (its significant bytes, big-endian).
pub fn push_tag(out: &mut Vec<u8>, tag: u32) {
    let bytes = tag.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    out.extend_from_slice(&bytes[first..]);
}

/// Append a BER length.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x83);
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        }
    }
}

/// Encode one TLV.
pub fn encode(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    push(&mut out, tag, value);
    out
}

/// Append one TLV to `out`.
pub fn push(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    push_tag(out, tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Encode a constructed TLV whose value is the concatenation of `children`.
pub fn encode_constructed(tag: u32, children: &[Vec<u8>]) -> Vec<u8> {
    encode(tag, &children.concat())
}

/// Decode one tag from the start of `data`; returns the tag and the rest.
pub fn parse_tag(data: &[u8]) -> Result<(u32, &[u8]), TlvError> {
    let first = *data.first().ok_or(TlvError::Truncated)?;
    let mut tag = u32::from(first);
    let mut i = 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *data.get(i).ok_or(TlvError::Truncated)?;
            i += 1;
            if i > 4 {
                return Err(TlvError::TagTooLong);
            }
            tag = (tag << 8) | u32::from(b);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    Ok((tag, &data[i..]))
}

/// Decode one length; returns it and the rest.
pub fn parse_len(data: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let first = *data.first().ok_or(TlvError::Truncated)?;
    if first < 0x80 {
        return Ok((first as usize, &data[1..]));
    }
    let n = (first & 0x7F) as usize;
    if n == 0 || n > 3 {
        return Err(TlvError::BadLength);
    }
    let bytes = data.get(1..1 + n).ok_or(TlvError::Truncated)?;
    let len = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    Ok((len, &data[1 + n..]))
}

/// Decode the first TLV of `data`; returns it and the bytes after it.
pub fn parse_one(data: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (tag, rest) = parse_tag(data)?;
    let (len, rest) = parse_len(rest)?;
    if rest.len() < len {
        return Err(TlvError::Truncated);
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Decode a sequence of TLVs filling `data` exactly.
pub fn parse_all(mut data: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (tlv, rest) = parse_one(data)?;
        out.push(tlv);
        data = rest;
    }
    Ok(out)
}

/// The value of the first TLV tagged `tag` among the sequence in `data`.
pub fn find(data: &[u8], tag: u32) -> Option<&[u8]> {
    let mut data = data;
    while !data.is_empty() {
        let (tlv, rest) = parse_one(data).ok()?;
        if tlv.tag == tag {
            return Some(tlv.value);
        }
        data = rest;
    }
    None
}

/// The value of a single TLV `data` that must be tagged `tag` (trailing bytes ignored).
pub fn expect(data: &[u8], tag: u32) -> Result<&[u8], TlvError> {
    let (tlv, _) = parse_one(data)?;
    if tlv.tag != tag {
        return Err(TlvError::Truncated);
    }
    Ok(tlv.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_multi_byte_tags_and_long_lengths() {
        assert_eq!(encode(0x5C, &[1]), vec![0x5C, 1, 1]);
        assert_eq!(&encode(0x5FC105, &[0; 3])[..4], &[0x5F, 0xC1, 0x05, 3]);
        assert_eq!(&encode(0x7F49, &[0; 200])[..4], &[0x7F, 0x49, 0x81, 200]);
        assert_eq!(&encode(0x53, &[0; 300])[..4], &[0x53, 0x82, 1, 44]);
        assert_eq!(
            &encode(0x53, &[0; 70000])[..5],
            &[0x53, 0x83, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn round_trips() {
        let mut seq = encode(0x5FC105, &[9; 400]);
        seq.extend(encode(0x7F49, &[1, 2]));
        seq.extend(encode(0x01, &[]));
        let all = parse_all(&seq).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].tag, 0x5FC105);
        assert_eq!(all[0].value.len(), 400);
        assert_eq!(find(&seq, 0x7F49), Some(&[1u8, 2][..]));
        assert_eq!(find(&seq, 0x02), None);
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(parse_one(&[0x53, 5, 1]), Err(TlvError::Truncated));
        assert_eq!(parse_one(&[0x5F]), Err(TlvError::Truncated));
        assert_eq!(
            parse_one(&[0x53, 0x85, 0, 0, 0, 0, 1]),
            Err(TlvError::BadLength)
        );
        assert_eq!(
            parse_one(&[0x5F, 0xC1, 0x81, 0x81, 0x01]),
            Err(TlvError::TagTooLong)
        );
        assert!(parse_all(&[0x53, 1]).is_err());
    }
}
