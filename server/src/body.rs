//! Reading request bodies: the size limit on the raw stream and on the decoded bytes.

use std::io::Read;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;

use crate::error::ApiError;

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No encoding.
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// Reads the `Content-Encoding` header; an unknown one is `415`, named in the message by
    /// its first 40 characters at most (the header is the client's text, copied into logs).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        let text = String::from_utf8_lossy(value.as_bytes())
            .trim()
            .to_ascii_lowercase();
        match text.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => {
                let mut shown: String = text.chars().take(40).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                Err(ApiError::UnsupportedEncoding(shown))
            }
        }
    }
}

/// Reads the raw body, refusing it as soon as it passes `limit` bytes (or declares more), or
/// when no byte of it arrives for `idle` (`408`: a stalled client would otherwise hold its
/// connection and its share of memory for ever).
pub async fn read_raw(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    idle: Duration,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = body;
    let mut out = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    while let Some(frame) = tokio::time::timeout(idle, body.frame())
        .await
        .map_err(|_| ApiError::BodyTimeout { idle })?
    {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(ApiError::TooLarge { limit });
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Decodes `raw`, refusing output past `limit` bytes without producing more than `limit + 1`.
pub fn decode(raw: Vec<u8>, encoding: Encoding, limit: usize) -> Result<Vec<u8>, ApiError> {
    let invalid = |e: std::io::Error| {
        ApiError::BadRequest(format!("the body is not valid {encoding:?} data: {e}"))
    };
    let decoder: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(raw),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw.as_slice())),
        Encoding::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(raw.as_slice()).map_err(invalid)?)
        }
    };
    // JSON event batches inflate about tenfold; sizing for that spares the copies of growing.
    let mut out = Vec::with_capacity(raw.len().saturating_mul(10).min(limit + 1));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(invalid)?;
    if out.len() > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("write");
        enc.finish().expect("finish")
    }

    #[test]
    fn an_unknown_encoding_is_415_named_briefly() {
        let mut headers = HeaderMap::new();
        let long = "x".repeat(20_000);
        headers.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_str(&long).expect("header"),
        );
        match Encoding::from_headers(&headers) {
            Err(ApiError::UnsupportedEncoding(shown)) => {
                assert!(shown.chars().count() <= 41, "{} characters", shown.len());
            }
            other => panic!("{other:?}"),
        }
        // Bytes that are not visible ASCII are an unknown encoding too, not "no encoding".
        headers.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_bytes(b"gzip\xff").expect("header"),
        );
        assert!(matches!(
            Encoding::from_headers(&headers),
            Err(ApiError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn decodes_within_the_limit_and_refuses_past_it() {
        let data = vec![b'a'; 1000];
        assert_eq!(
            decode(gzip(&data), Encoding::Gzip, 1000).expect("fits"),
            data
        );
        assert!(matches!(
            decode(gzip(&data), Encoding::Gzip, 999),
            Err(ApiError::TooLarge { .. })
        ));
        let z = zstd::bulk::compress(&data, 1).expect("zstd");
        assert_eq!(decode(z.clone(), Encoding::Zstd, 1000).expect("fits"), data);
        assert!(matches!(
            decode(z, Encoding::Zstd, 999),
            Err(ApiError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(b"not gzip".to_vec(), Encoding::Gzip, 1000),
            Err(ApiError::BadRequest(_))
        ));
    }
}
