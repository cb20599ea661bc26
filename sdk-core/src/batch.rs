//! Packing buffered rows into request bodies: greedy, oldest first, within both limits.

use backfill_protocol::time::format_iso_ms;

/// The start of every body; the rows follow it, joined by commas.
const HEAD: &[u8] = br#"{"events":["#;
/// Bytes of the end of a body: `],"sentAt":"<24 chars>"}`.
const TAIL_BYTES: usize = r#"],"sentAt":"2026-11-28T09:00:00.000Z"}"#.len();
/// Bytes of the envelope around the events: `{"events":[` and `],"sentAt":"<24 chars>"}`.
#[cfg(test)]
pub const ENVELOPE_BYTES: usize = HEAD.len() + TAIL_BYTES;
/// Room reserved per event when a batch starts, so that a typical batch is filled without
/// growing its buffer.
const RESERVE_PER_EVENT: usize = 256;

/// A request's worth of rows.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Buffer positions of the rows, in order.
    pub seqs: Vec<i64>,
    /// Each row's size in the buffer (its JSON), in the same order.
    pub sizes: Vec<u32>,
    /// The body without its end: the head and the rows' JSON joined by commas. The rows are
    /// written here once, and [`seal`] adds `sentAt` just before sending, without a copy.
    pub open_body: Vec<u8>,
}

impl Batch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The buffer position of the last row: the next batch starts after it.
    pub fn last_seq(&self) -> Option<i64> {
        self.seqs.last().copied()
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Size of the body this batch makes, envelope included, before compression.
    pub fn body_len(&self) -> usize {
        self.open_body.len().max(HEAD.len()) + TAIL_BYTES
    }
}

/// Ends a body begun by a [`Packer`], stamping `sentAt`; call it just before sending.
pub fn seal(mut open_body: Vec<u8>, sent_at_ms: i64) -> Vec<u8> {
    if open_body.is_empty() {
        open_body.extend_from_slice(HEAD);
    }
    open_body.extend_from_slice(br#"],"sentAt":""#);
    open_body.extend_from_slice(format_iso_ms(sent_at_ms).as_bytes());
    open_body.extend_from_slice(br#""}"#);
    open_body
}

/// Fills a [`Batch`] one row at a time until the next row would pass a limit.
#[derive(Debug)]
pub struct Packer {
    max_events: usize,
    max_bytes: usize,
    batch: Batch,
}

impl Packer {
    /// A packer for at most `max_events` events and `max_bytes` of body.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        let max_events = max_events.max(1);
        let mut open_body =
            Vec::with_capacity((max_events * RESERVE_PER_EVENT).min(max_bytes) + HEAD.len());
        open_body.extend_from_slice(HEAD);
        Self {
            max_events,
            max_bytes,
            batch: Batch {
                seqs: Vec::with_capacity(max_events),
                sizes: Vec::with_capacity(max_events),
                open_body,
            },
        }
    }

    /// Adds the row if it fits; returns `false` (and leaves it out) when it does not. The first
    /// row always fits: a row the contract allows is far below the 10 MiB request limit.
    pub fn offer(&mut self, seq: i64, json: &str) -> bool {
        if self.batch.len() >= self.max_events {
            return false;
        }
        let comma = usize::from(!self.batch.is_empty());
        if !self.batch.is_empty() && self.batch.body_len() + comma + json.len() > self.max_bytes {
            return false;
        }
        if comma == 1 {
            self.batch.open_body.push(b',');
        }
        self.batch.open_body.extend_from_slice(json.as_bytes());
        self.batch.seqs.push(seq);
        // A row is at most 256 KiB; the size only feeds the buffer's byte count.
        self.batch
            .sizes
            .push(u32::try_from(json.len()).unwrap_or(u32::MAX));
        true
    }

    /// The packed batch.
    pub fn finish(self) -> Batch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_protocol::limits::{MAX_BATCH_EVENTS, MAX_BODY_BYTES, MAX_EVENT_BYTES};

    fn event(len: usize) -> String {
        // A JSON string of exactly `len` bytes.
        format!("\"{}\"", "x".repeat(len - 2))
    }

    #[test]
    fn the_envelope_is_counted() {
        let mut p = Packer::new(10, 1000);
        assert!(p.offer(1, &event(100)));
        let b = p.finish();
        let len = b.body_len();
        let body = seal(b.open_body, 1_795_860_000_000);
        assert_eq!(body.len(), len);
        assert_eq!(body.len(), ENVELOPE_BYTES + 100);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(parsed["sentAt"], "2026-11-28T10:00:00.000Z");
        assert_eq!(parsed["events"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn fills_to_the_byte_limit_exactly() {
        // Two rows of 100 bytes plus a comma: exactly at the limit.
        let limit = ENVELOPE_BYTES + 201;
        let mut p = Packer::new(10, limit);
        assert!(p.offer(1, &event(100)));
        assert!(p.offer(2, &event(100)));
        assert!(!p.offer(3, "1"), "one more byte would pass the limit");
        assert_eq!(p.finish().body_len(), limit);
    }

    #[test]
    fn stops_at_2000_tiny_events() {
        let mut p = Packer::new(MAX_BATCH_EVENTS, MAX_BODY_BYTES);
        let mut n = 0;
        while p.offer(n, "{}") {
            n += 1;
        }
        assert_eq!(n, 2000);
        assert_eq!(p.finish().len(), 2000);
    }

    #[test]
    fn a_256_kib_event_fits_alone_and_forty_fill_ten_mib() {
        let big = event(MAX_EVENT_BYTES);
        let mut p = Packer::new(MAX_BATCH_EVENTS, MAX_BODY_BYTES);
        let mut n = 0;
        while p.offer(n, &big) {
            n += 1;
        }
        let b = p.finish();
        assert_eq!(
            n, 39,
            "40 rows of 256 KiB with commas and envelope pass 10 MiB"
        );
        assert!(b.body_len() <= MAX_BODY_BYTES);
        let mut tiny = Packer::new(MAX_BATCH_EVENTS, 1024);
        assert!(
            tiny.offer(0, &big),
            "the first row always goes, even over a small configured cap"
        );
        assert!(!tiny.offer(1, "{}"));
    }
}
