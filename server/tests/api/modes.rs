//! Client modes (SPEC §1), rotation, revocation, upgrades of stores written before modes, and
//! the read API's refusal of unknown parameters.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use backfill_server::admin::{self, CreateOptions};
use backfill_server::auth::NewProject;
use backfill_server::clock::ManualClock;
use backfill_server::config::ClientMode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::*;

/// A harness whose store also holds a `write` and a `read` key for [`PROJECT`]'s data, made
/// before the server starts.
async fn with_keys(kind: StoreKind) -> (Harness, NewProject, NewProject) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let place = Place::new(kind, dir.path());
    let store = place.open(&clock).await;
    backfill_server::auth::bootstrap(store.as_ref(), &credentials(), NOW)
        .await
        .expect("bootstrap");
    let key = |mode| CreateOptions {
        name: format!("{mode} key"),
        mode,
        for_client: Some(PROJECT.parse().expect("uuid")),
    };
    let write = admin::create(store.as_ref(), key(ClientMode::Write), NOW)
        .await
        .expect("write key");
    let read = admin::create(store.as_ref(), key(ClientMode::Read), NOW)
        .await
        .expect("read key");
    (
        Harness::over(dir, place, clock, store, 5).await,
        write,
        read,
    )
}

async fn post_as(
    h: &Harness,
    path: &str,
    id: &str,
    secret: &str,
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .header("openpanel-client-id", id)
        .header("openpanel-client-secret", secret)
        .body(Body::from(body.to_string()))
        .expect("request");
    let (status, _, body) = h.send(req).await;
    (status, body)
}

fn assert_error_body(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"], json!(expected.as_u16()), "{body}");
    assert_eq!(
        body["error"],
        json!(expected.canonical_reason().expect("phrase")),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn a_write_key_ingests_but_cannot_read(store: StoreKind) {
    let (h, write, read) = with_keys(store).await;
    let (id, secret) = (write.client_id.to_string(), write.secret.clone());
    let (status, body) = post_as(
        &h,
        "/track/batch",
        &id,
        &secret,
        json!({"events": [reading("dev-1", NOW - MINUTE, "w1")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], json!(1));
    let (status, body) = post_as(
        &h,
        "/track",
        &id,
        &secret,
        reading("dev-1", NOW - MINUTE, "w2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in ["/api/events", "/api/sessions", "/api/profiles/u1"] {
        let (status, body) = h.get_as(path, &id, &secret).await;
        assert_error_body(status, &body, StatusCode::FORBIDDEN);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("write")),
            "{body}"
        );
    }
    // The write key's events are the project's: its read key and its root key see them.
    let (status, page) = h
        .get_as(
            "/api/events?name=reading",
            &read.client_id.to_string(),
            &read.secret,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut ids: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["insert_id"].as_str())
        .collect();
    // Both have the same event time; their order then follows the server's random ids.
    ids.sort_unstable();
    assert_eq!(ids, ["w1", "w2"]);
    assert_eq!(
        h.all_events("name=reading").await.len(),
        2,
        "root reads too"
    );
}

async fn a_read_key_reads_but_cannot_ingest(store: StoreKind) {
    let (h, _, read) = with_keys(store).await;
    let (id, secret) = (read.client_id.to_string(), read.secret.clone());
    for path in ["/track/batch", "/track"] {
        // Not JSON: a 403 (not a 400) shows the body was never read.
        let req = Request::post(path)
            .header("openpanel-client-id", id.as_str())
            .header("openpanel-client-secret", secret.as_str())
            .body(Body::from("{{{"))
            .expect("request");
        let (status, _, body) = h.send(req).await;
        assert_error_body(status, &body, StatusCode::FORBIDDEN);
    }
    let (status, body) = h.get_as("/api/events", &id, &secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.all_events("").await.len(), 0, "nothing was stored");
}

async fn device_and_session_ids_are_derived_from_the_project_whatever_the_key(store: StoreKind) {
    let (h, write, _) = with_keys(store).await;
    let event = json!({"type": "track", "payload": {"name": "tap", "properties": {"__deviceId": "d1", "__timestamp": NOW - MINUTE}}});
    let (_, by_write) = post_as(
        &h,
        "/track",
        &write.client_id.to_string(),
        &write.secret,
        event.clone(),
    )
    .await;
    let (_, by_root) = post_as(&h, "/track", PROJECT, SECRET, event).await;
    assert_eq!(by_write["sessionId"], by_root["sessionId"]);
    assert!(
        by_write["sessionId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

async fn a_rotated_secret_works_for_its_grace_period_then_is_refused(store: StoreKind) {
    let (h, write, _) = with_keys(store).await;
    let id = write.client_id.to_string();
    let grace = admin::RotateOptions {
        grace_ms: HOUR,
        force: false,
    };
    let rotated = admin::rotate(h.store.as_ref(), write.client_id, grace, NOW)
        .await
        .expect("rotate");
    assert_ne!(rotated.secret, write.secret);
    let send = |secret: String, key: &'static str| {
        let h = &h;
        let id = id.clone();
        async move {
            post_as(
                h,
                "/track/batch",
                &id,
                &secret,
                json!({"events": [reading("dev-1", NOW - MINUTE, key)]}),
            )
            .await
            .0
        }
    };
    assert_eq!(
        send(rotated.secret.clone(), "n1").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(send(write.secret.clone(), "o1").await, StatusCode::ACCEPTED);
    h.clock.advance(HOUR + 1);
    assert_eq!(
        send(write.secret.clone(), "o2").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(rotated.secret.clone(), "n2").await,
        StatusCode::ACCEPTED
    );
}

async fn a_revoked_key_is_refused_and_its_project_data_stays(store: StoreKind) {
    let (h, write, _) = with_keys(store).await;
    let id = write.client_id.to_string();
    let (status, _) = post_as(
        &h,
        "/track/batch",
        &id,
        &write.secret,
        json!({"events": [reading("dev-1", NOW - MINUTE, "k1")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    admin::revoke(h.store.as_ref(), write.client_id, NOW)
        .await
        .expect("revoke");
    let now = admin::RotateOptions {
        grace_ms: 0,
        force: false,
    };
    let err = admin::rotate(h.store.as_ref(), write.client_id, now, NOW)
        .await
        .expect_err("a revoked key stays revoked");
    assert!(err.to_string().contains("revoked"), "{err}");
    let h = h.restart().await;
    let (status, body) = post_as(
        &h,
        "/track/batch",
        &id,
        &write.secret,
        json!({"events": [reading("dev-1", NOW - MINUTE, "k2")]}),
    )
    .await;
    assert_error_body(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(h.all_events("name=reading").await.len(), 1);
    let unknown = Uuid::new_v4();
    let err = admin::revoke(h.store.as_ref(), unknown, NOW)
        .await
        .expect_err("unknown client");
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");
}

async fn configured_modes_apply(store: StoreKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let place = Place::new(store, dir.path());
    let store = place.open(&clock).await;
    let write_only = "0b6d0a3e-58c4-4d0e-9a51-9e4f3c2d1b0a";
    let configured = vec![
        format!("{write_only}:gw-secret:write")
            .parse()
            .expect("credential"),
    ];
    backfill_server::auth::bootstrap(store.as_ref(), &configured, NOW)
        .await
        .expect("bootstrap");
    let h = Harness::over(dir, place, clock, store, 5).await;
    let (status, body) = post_as(
        &h,
        "/track/batch",
        write_only,
        "gw-secret",
        json!({"events": [reading("dev-1", NOW - MINUTE, "k1")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = h.get_as("/api/events", write_only, "gw-secret").await;
    assert_error_body(status, &body, StatusCode::FORBIDDEN);
}

async fn a_revoked_client_stays_revoked_when_still_configured(store: StoreKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let place = Place::new(store, dir.path());
    let store = place.open(&clock).await;
    let gateway = "0b6d0a3e-58c4-4d0e-9a51-9e4f3c2d1b0a";
    let configured = vec![
        format!("{gateway}:gw-secret:write")
            .parse()
            .expect("credential"),
    ];
    backfill_server::auth::bootstrap(store.as_ref(), &configured, NOW)
        .await
        .expect("bootstrap");
    let id = Uuid::parse_str(gateway).expect("uuid");
    admin::revoke(store.as_ref(), id, NOW)
        .await
        .expect("revoke");
    // A restart with the same --project list.
    backfill_server::auth::bootstrap(store.as_ref(), &configured, NOW + 1)
        .await
        .expect("bootstrap again");
    let listed = admin::list(store.as_ref()).await.expect("list");
    let record = listed
        .iter()
        .find(|r| r.client_id == gateway)
        .expect("still listed");
    assert_eq!(record.revoked_at, Some(NOW), "the revocation is kept");
    let h = Harness::over(dir, place, clock, store, 5).await;
    let (status, body) = post_as(
        &h,
        "/track/batch",
        gateway,
        "gw-secret",
        json!({"events": [reading("dev-1", NOW - MINUTE, "k1")]}),
    )
    .await;
    assert_error_body(status, &body, StatusCode::UNAUTHORIZED);
}

async fn a_restart_with_a_stale_list_keeps_a_rotated_secret(store: StoreKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let place = Place::new(store, dir.path());
    let store = place.open(&clock).await;
    let gateway = "0b6d0a3e-58c4-4d0e-9a51-9e4f3c2d1b0a";
    let configured = vec![
        format!("{gateway}:gw-secret:write")
            .parse()
            .expect("credential"),
    ];
    backfill_server::auth::bootstrap(store.as_ref(), &configured, NOW)
        .await
        .expect("bootstrap");
    let id = Uuid::parse_str(gateway).expect("uuid");
    let now = admin::RotateOptions {
        grace_ms: 0,
        force: false,
    };
    let rotated = admin::rotate(store.as_ref(), id, now, NOW)
        .await
        .expect("rotate");
    // A node restarted with the list it had before the rotation (or another node started
    // with it) does not bring the replaced secret back.
    backfill_server::auth::bootstrap(store.as_ref(), &configured, NOW + 1)
        .await
        .expect("bootstrap again");
    let h = Harness::over(dir, place, clock, store, 5).await;
    async fn send(h: &Harness, secret: &str, key: &str) -> StatusCode {
        let batch = json!({"events": [reading("dev-1", NOW - MINUTE, key)]});
        let gateway = "0b6d0a3e-58c4-4d0e-9a51-9e4f3c2d1b0a";
        post_as(h, "/track/batch", gateway, secret, batch).await.0
    }
    assert_eq!(send(&h, "gw-secret", "k1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&h, &rotated.secret, "k2").await, StatusCode::ACCEPTED);
    // A list that gives the stored secret and mode changes nothing, and one that gives a new
    // secret is taken (with a warning).
    let current = vec![
        format!("{gateway}:{}:write", rotated.secret)
            .parse()
            .expect("credential"),
    ];
    backfill_server::auth::bootstrap(h.store.as_ref(), &current, NOW + 2)
        .await
        .expect("bootstrap with the current secret");
    let h = h.restart().await;
    assert_eq!(send(&h, &rotated.secret, "k3").await, StatusCode::ACCEPTED);
    let changed = vec![
        format!("{gateway}:brand-new-secret:write")
            .parse()
            .expect("credential"),
    ];
    backfill_server::auth::bootstrap(h.store.as_ref(), &changed, NOW + 3)
        .await
        .expect("bootstrap with a new secret");
    let h = h.restart().await;
    assert_eq!(
        send(&h, "brand-new-secret", "k4").await,
        StatusCode::ACCEPTED
    );
}

async fn a_key_made_just_after_a_refusal_is_accepted_at_once(store: StoreKind) {
    let (h, _, _) = with_keys(store).await;
    let batch = |key: &str| json!({"events": [reading("dev-1", NOW - MINUTE, key)]});
    let unknown = Uuid::new_v4().to_string();
    let (status, _) = post_as(&h, "/track/batch", &unknown, "nope", batch("k0")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another node (here: the admin command on the same store) makes a key a moment later;
    // the refusal above already re-read the clients, and the cache does not know it yet.
    let key = CreateOptions {
        name: "fresh".to_owned(),
        mode: ClientMode::Write,
        for_client: Some(PROJECT.parse().expect("uuid")),
    };
    let fresh = admin::create(h.store.as_ref(), key, NOW)
        .await
        .expect("fresh key");
    let (status, body) = post_as(
        &h,
        "/track/batch",
        &fresh.client_id.to_string(),
        &fresh.secret,
        batch("k1"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

async fn the_read_api_refuses_unknown_parameters(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![reading("dev-1", NOW - MINUTE, "k1")]).await;
    for (path, name) in [
        ("/api/events?devce_id=dev-2", "devce_id"),
        ("/api/events?limit=10&sesion_id=x", "sesion_id"),
        ("/api/sessions?session_id=x", "session_id"),
    ] {
        let (status, body) = h.get(path).await;
        assert_error_body(status, &body, StatusCode::BAD_REQUEST);
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(name)),
            "{path}: {body}"
        );
    }
    let (status, body) = h.get("/api/events?device_id=dev-2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"], json!([]), "the filter applies");
    let (status, body) = h.get("/api/events?limit=0").await;
    assert_error_body(status, &body, StatusCode::BAD_REQUEST);
}

/// The `projects` table as schema version 3 wrote it (no modes), and its sessions (no
/// `profile_at`).
const PROJECTS_V3: &str = "
    ALTER TABLE sessions DROP COLUMN profile_at;
    DROP TABLE projects;
    CREATE TABLE projects (
        key         INTEGER PRIMARY KEY,
        client_id   TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        secret_salt TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    PRAGMA user_version = 3;";

#[tokio::test]
async fn a_store_written_before_modes_keeps_its_clients_working_as_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backfill.db");
    let clock = ManualClock::new(NOW);
    // A version-3 database with one client, as the previous release left it.
    let place = Place::File(path.clone());
    drop(place.open(&clock).await);
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(PROJECTS_V3).expect("version 3");
        let salt = "0123456789abcdef";
        conn.execute(
            "INSERT INTO projects (client_id, secret_hash, secret_salt, created_at)
             VALUES (?1, ?2, ?3, 1795860000)",
            rusqlite::params![
                PROJECT,
                backfill_server::auth::hash_secret(salt, SECRET),
                salt
            ],
        )
        .expect("client");
    }
    let store = place.open(&clock).await;
    backfill_server::auth::bootstrap(store.as_ref(), &[], NOW)
        .await
        .expect("bootstrap");
    let records = admin::list(store.as_ref()).await.expect("list");
    assert_eq!(records.len(), 1, "no client is created next to the old one");
    assert_eq!(records[0].mode, ClientMode::Root);
    let state = backfill_server::AppState::new(
        std::sync::Arc::clone(&store),
        std::sync::Arc::new(clock.clone()),
        std::sync::Arc::new(backfill_server::metrics::Metrics::default()),
        5,
        None,
    )
    .await
    .expect("state");
    let h = Harness {
        dir,
        place,
        clock,
        store,
        router: backfill_server::app(state),
    };
    h.accept(vec![reading("dev-1", NOW - MINUTE, "k1")]).await;
    assert_eq!(h.all_events("name=reading").await.len(), 1);
}

store_tests!(
    a_write_key_ingests_but_cannot_read,
    a_read_key_reads_but_cannot_ingest,
    device_and_session_ids_are_derived_from_the_project_whatever_the_key,
    a_rotated_secret_works_for_its_grace_period_then_is_refused,
    a_revoked_key_is_refused_and_its_project_data_stays,
    configured_modes_apply,
    a_revoked_client_stays_revoked_when_still_configured,
    a_restart_with_a_stale_list_keeps_a_rotated_secret,
    a_key_made_just_after_a_refusal_is_accepted_at_once,
    the_read_api_refuses_unknown_parameters,
);
