use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::common::*;

async fn post_with(
    h: &Harness,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/track/batch").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, _, body) = h
        .send(req.body(Body::from(body.to_owned())).expect("request"))
        .await;
    (status, body)
}

async fn bad_credentials_are_401_before_the_body_is_read(store: StoreKind) {
    let h = Harness::new(store).await;
    // The body is not JSON: a 401 (not a 400) shows it was never read.
    let not_json = "{{{";
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("openpanel-client-secret", SECRET)],
        vec![
            ("openpanel-client-id", "not-a-uuid"),
            ("openpanel-client-secret", SECRET),
        ],
        vec![
            (
                "openpanel-client-id",
                "00000000-0000-4000-8000-000000000000",
            ),
            ("openpanel-client-secret", SECRET),
        ],
        vec![
            ("openpanel-client-id", PROJECT),
            ("openpanel-client-secret", "wrong"),
        ],
        vec![("openpanel-client-id", PROJECT)],
        vec![
            ("openpanel-client-id", PROJECT),
            ("openpanel-client-secret", OTHER_SECRET),
        ],
    ];
    for headers in cases {
        let (status, body) = post_with(&h, &headers, not_json).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(body["status"], json!(401));
        assert_eq!(body["error"], json!("Unauthorized"));
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            !body.to_string().contains(SECRET),
            "the secret is never echoed"
        );
    }
    let (status, _) = post_with(
        &h,
        &[
            ("openpanel-client-id", PROJECT),
            ("openpanel-client-secret", SECRET),
        ],
        not_json,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "with good credentials the body is read"
    );
}

async fn read_api_requires_credentials(store: StoreKind) {
    let h = Harness::new(store).await;
    for path in ["/api/events", "/api/sessions", "/api/profiles/u1"] {
        let (status, _) = h.get_as(path, PROJECT, "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

async fn a_project_sees_only_its_own_data(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![reading("dev-1", NOW - MINUTE, "k1")]).await;
    h.accept(vec![
        json!({"type": "identify", "payload": {"profileId": "u1", "firstName": "Ada"}}),
    ])
    .await;
    let (_, mine) = h.get("/api/events").await;
    assert_eq!(
        mine["events"].as_array().map(Vec::len),
        Some(2),
        "reading and its session_start"
    );
    let (status, theirs) = h.get_as("/api/events", OTHER_PROJECT, OTHER_SECRET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(theirs["events"], json!([]));
    let (_, theirs) = h.get_as("/api/sessions", OTHER_PROJECT, OTHER_SECRET).await;
    assert_eq!(theirs["sessions"], json!([]));
    let (status, _) = h
        .get_as("/api/profiles/u1", OTHER_PROJECT, OTHER_SECRET)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same insert id in another project is not a duplicate.
    let req = Request::post("/track/batch")
        .header("openpanel-client-id", OTHER_PROJECT)
        .header("openpanel-client-secret", OTHER_SECRET)
        .body(Body::from(
            json!({"events": [reading("dev-1", NOW - MINUTE, "k1")]}).to_string(),
        ))
        .expect("request");
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["duplicates"], json!(0));
}

store_tests!(
    bad_credentials_are_401_before_the_body_is_read,
    read_api_requires_credentials,
    a_project_sees_only_its_own_data,
);
