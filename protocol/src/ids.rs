//! The two id derivations of SPEC §6, computed the same way on every server node.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sha3::Shake256;
use sha3::digest::{ExtendableOutput, Update, XofReader};

use crate::limits::{SESSION_GRACE_MS, SESSION_WINDOW_MS};

/// The fingerprint device id of a request without `__deviceId`:
/// `hex(SHAKE256("{ua}:{ip}:{project_id}:{salt}", 16 bytes))`.
///
/// `salt` is the salt of the receive day. Devices behind one IP with one user agent share this id,
/// which is why the SDK always sends its own `__deviceId`.
pub fn device_id(user_agent: &str, ip: &str, project_id: &str, salt: &str) -> String {
    let mut hasher = Shake256::default();
    hasher.update(format!("{user_agent}:{ip}:{project_id}:{salt}").as_bytes());
    let mut out = [0u8; 16];
    hasher.finalize_xof().read(&mut out);
    hex(&out)
}

/// The 30-minute bucket of an event time, with the 5 s grace that keeps an event landing just
/// after a boundary in the session it most likely belongs to.
pub fn session_bucket(event_time_ms: i64) -> i64 {
    let b = event_time_ms.div_euclid(SESSION_WINDOW_MS);
    if event_time_ms - b * SESSION_WINDOW_MS < SESSION_GRACE_MS {
        b - 1
    } else {
        b
    }
}

/// The deterministic session id of an event of `device_id` at `event_time_ms`:
/// `base64url_nopad(SHA-256("sess:v1:{project_id}:{device_id}:{b}")[0..16])`.
pub fn session_id(project_id: &str, device_id: &str, event_time_ms: i64) -> String {
    let b = session_bucket(event_time_ms);
    let digest = Sha256::digest(format!("sess:v1:{project_id}:{device_id}:{b}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
    const DEVICE: &str = "gw-0001-sensor-07";

    #[test]
    fn session_ids_match_the_spec_vectors() {
        let vectors = [
            (1_764_288_000_000, 980_159, "QWBTyQ-9gHGf9KlYq5-i_g"),
            (1_764_288_004_999, 980_159, "QWBTyQ-9gHGf9KlYq5-i_g"),
            (1_764_288_005_000, 980_160, "qoPcS5WjlrHt4Zf5X8ETDg"),
            (1_764_289_799_999, 980_160, "qoPcS5WjlrHt4Zf5X8ETDg"),
            (1_764_289_805_000, 980_161, "h3ga5RYgRDjCWlwzG74Qdg"),
        ];
        for (t, bucket, id) in vectors {
            assert_eq!(session_bucket(t), bucket, "bucket of {t}");
            assert_eq!(session_id(PROJECT, DEVICE, t), id, "session of {t}");
        }
    }

    #[test]
    fn device_id_matches_the_spec_vector() {
        let id = device_id(
            "Mozilla/5.0 (Linux; Android 14)",
            "203.0.113.7",
            PROJECT,
            "salt-2026-11-28",
        );
        assert_eq!(id, "72d7f5f4540b1fda0f596584f039e6d2");
    }

    #[test]
    fn other_devices_and_projects_get_other_sessions() {
        let t = 1_764_288_010_000;
        let mine = session_id(PROJECT, DEVICE, t);
        assert_ne!(mine, session_id(PROJECT, "gw-0001-sensor-08", t));
        assert_ne!(
            mine,
            session_id("00000000-0000-4000-8000-000000000000", DEVICE, t)
        );
    }
}
