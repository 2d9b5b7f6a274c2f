//! Request body limits and decoding, as pure functions over bytes.

use std::io::Read;

use bytes::Bytes;
use flate2::read::GzDecoder;

use crate::error::GatewayError;

/// Content encodings the gateway accepts on request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    Identity,
    Gzip,
}

/// Reads the `Content-Encoding` header value. A missing header is identity.
pub fn parse_content_encoding(value: Option<&str>) -> Result<BodyEncoding, GatewayError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(BodyEncoding::Identity);
    };
    match value.to_ascii_lowercase().as_str() {
        "identity" => Ok(BodyEncoding::Identity),
        "gzip" | "x-gzip" => Ok(BodyEncoding::Gzip),
        _ => Err(GatewayError::unsupported_encoding(value)),
    }
}

/// Checks a declared `Content-Length` against the limit before any byte is read.
pub fn check_declared_length(content_length: Option<&str>, limit: usize) -> Result<(), GatewayError> {
    match content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(length) if length > limit as u64 => Err(GatewayError::body_too_large(limit)),
        _ => Ok(()),
    }
}

/// Decodes a body. The decoded size is limited too, so a small gzip bomb cannot exhaust memory.
pub fn decode_body(raw: Bytes, encoding: BodyEncoding, limit: usize) -> Result<Bytes, GatewayError> {
    match encoding {
        BodyEncoding::Identity => Ok(raw),
        BodyEncoding::Gzip => {
            let mut decoded = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            let read = GzDecoder::new(raw.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(GatewayError::corrupt_body)?;
            if read > limit {
                return Err(GatewayError::body_too_large(limit));
            }
            Ok(Bytes::from(decoded))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn encodings_parsed() {
        assert_eq!(parse_content_encoding(None).unwrap(), BodyEncoding::Identity);
        assert_eq!(parse_content_encoding(Some("GZIP")).unwrap(), BodyEncoding::Gzip);
        let err = parse_content_encoding(Some("br")).unwrap_err();
        assert_eq!(err.status.as_u16(), 415);
    }

    #[test]
    fn gzip_body_decoded() {
        let decoded = decode_body(gzip(b"{\"a\":1}"), BodyEncoding::Gzip, 100).unwrap();
        assert_eq!(decoded, &b"{\"a\":1}"[..]);
    }

    #[test]
    fn corrupt_gzip_is_400() {
        let err = decode_body(Bytes::from_static(b"not gzip at all"), BodyEncoding::Gzip, 100).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
    }

    #[test]
    fn gzip_bomb_is_413() {
        let err = decode_body(gzip(&vec![b'a'; 10_000]), BodyEncoding::Gzip, 1000).unwrap_err();
        assert_eq!(err.status.as_u16(), 413);
    }

    #[test]
    fn declared_length_over_limit_is_413() {
        assert!(check_declared_length(Some("1001"), 1000).is_err());
        assert!(check_declared_length(Some("1000"), 1000).is_ok());
        assert!(check_declared_length(None, 1000).is_ok());
    }
}
