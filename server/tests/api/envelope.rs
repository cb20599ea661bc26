use std::io::Write;

use axum::http::StatusCode;
use backfill_protocol::limits::MAX_BODY_BYTES;
use serde_json::json;

use crate::common::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write");
    enc.finish().expect("finish")
}

/// A valid one-event batch padded with insignificant whitespace to exactly `len` bytes.
fn padded_batch(len: usize) -> Vec<u8> {
    let mut body = json!({"events": [reading("dev-1", NOW, "pad")]})
        .to_string()
        .into_bytes();
    body.pop();
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

async fn event_count_must_be_1_to_2000(store: StoreKind) {
    let h = Harness::new(store).await;
    let (status, body) = h.batch(vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], json!(400));
    assert_eq!(body["error"], json!("Bad Request"));
    let too_many: Vec<_> = (0..2001)
        .map(|i| reading("dev-1", NOW, &format!("k{i}")))
        .collect();
    let (status, _) = h.batch(too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = h.get("/api/events").await;
    assert_eq!(
        list["events"],
        json!([]),
        "a refused envelope stores nothing"
    );
    let exactly: Vec<_> = (0..2000)
        .map(|i| reading("dev-1", NOW - i, &format!("k{i}")))
        .collect();
    h.accept(exactly).await;
}

async fn malformed_envelopes_are_400(store: StoreKind) {
    let h = Harness::new(store).await;
    for body in [
        &b"not json"[..],
        b"[1,2]",
        br#"{"events": {"a": 1}}"#,
        br#"{"events": null}"#,
        br#"{"batch": []}"#,
        b"",
    ] {
        let (status, _, answer) = h.post_raw("/track/batch", body.to_vec(), &[]).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(answer["status"], json!(400));
    }
    let (status, _) = h
        .batch_body(json!({"events": [reading("d", NOW, "x")], "sentAt": "whenever"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn body_limit_is_ten_mib_raw_and_decoded(store: StoreKind) {
    let h = Harness::new(store).await;
    let (status, _, body) = h
        .post_raw("/track/batch", padded_batch(MAX_BODY_BYTES), &[])
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "exactly 10 MiB is allowed: {body}"
    );
    let (status, _, body) = h
        .post_raw("/track/batch", padded_batch(MAX_BODY_BYTES + 1), &[])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["status"], json!(413));

    let gz = gzip(&padded_batch(MAX_BODY_BYTES));
    let (status, _, _) = h
        .post_raw("/track/batch", gz, &[("content-encoding", "gzip")])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "10 MiB decoded is allowed");
    let gz = gzip(&padded_batch(MAX_BODY_BYTES + 1));
    let (status, _, _) = h
        .post_raw("/track/batch", gz, &[("content-encoding", "gzip")])
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "10 MiB + 1 decoded is refused"
    );
    // A bomb: 64 MiB of zeros in about 64 KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).expect("write");
    }
    let bomb = enc.finish().expect("finish");
    let (status, _, _) = h
        .post_raw("/track/batch", bomb, &[("content-encoding", "gzip")])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let z = zstd::bulk::compress(&padded_batch(MAX_BODY_BYTES + 1), 3).expect("zstd");
    let (status, _, _) = h
        .post_raw("/track/batch", z, &[("content-encoding", "zstd")])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

async fn compressed_bodies_are_decoded(store: StoreKind) {
    let h = Harness::new(store).await;
    let body = json!({"events": [reading("dev-1", NOW, "gz")]})
        .to_string()
        .into_bytes();
    let (status, _, answer) = h
        .post_raw("/track/batch", gzip(&body), &[("content-encoding", "gzip")])
        .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (StatusCode::ACCEPTED, json!(1))
    );
    let body = json!({"events": [reading("dev-1", NOW, "zs")]})
        .to_string()
        .into_bytes();
    let z = zstd::bulk::compress(&body, 3).expect("zstd");
    let (status, _, answer) = h
        .post_raw("/track/batch", z, &[("content-encoding", "zstd")])
        .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (StatusCode::ACCEPTED, json!(1))
    );
    let (status, _, _) = h
        .post_raw(
            "/track/batch",
            b"garbage".to_vec(),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn unknown_encoding_is_415(store: StoreKind) {
    let h = Harness::new(store).await;
    let body = json!({"events": [reading("dev-1", NOW, "br")]})
        .to_string()
        .into_bytes();
    let (status, _, answer) = h
        .post_raw("/track/batch", body, &[("content-encoding", "br")])
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer["status"], json!(415));
}

store_tests!(
    event_count_must_be_1_to_2000,
    malformed_envelopes_are_400,
    body_limit_is_ten_mib_raw_and_decoded,
    compressed_bodies_are_decoded,
    unknown_encoding_is_415,
);
