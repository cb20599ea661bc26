//! Counters and histograms exposed at `GET /metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram in seconds with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// Every metric the server exports. Route labels are the router's patterns (e.g.
/// `/api/profiles/{profile_id}`), `preflight` (CORS preflights, answered before routing) or
/// `unmatched`, so their number is bounded.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Rows accepted (duplicates included).
    pub accepted: AtomicU64,
    /// Accepted rows that were already stored.
    pub duplicates: AtomicU64,
    /// Rows rejected with reason `validation`.
    pub rejected_validation: AtomicU64,
    /// Rows rejected with reason `internal`.
    pub rejected_internal: AtomicU64,
    /// Requests the store failed (answered `503`).
    pub store_errors: AtomicU64,
    /// Duration of each group commit of the store.
    pub commit_latency: Arc<Histogram>,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    request_latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl Metrics {
    /// Counts one answered request of `route` with `status` that took `seconds`.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_owned(), status)).or_default() += 1;
        }
        let histogram = self
            .request_latency
            .lock()
            .ok()
            .map(|mut latency| Arc::clone(latency.entry(route.to_owned()).or_default()));
        if let Some(h) = histogram {
            h.observe(seconds);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP backfill_build_info The running build.\n# TYPE backfill_build_info gauge\n\
             backfill_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP backfill_http_requests_total Answered requests by route and status.\n\
             # TYPE backfill_http_requests_total counter"
        );
        if let Ok(requests) = self.requests.lock() {
            for ((route, status), n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "backfill_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "backfill_events_accepted_total",
            "Rows accepted, duplicates included.",
            &self.accepted,
        );
        counter(
            &mut out,
            "backfill_events_duplicates_total",
            "Accepted rows already stored.",
            &self.duplicates,
        );
        let _ = writeln!(
            out,
            "# HELP backfill_events_rejected_total Rows rejected, by reason.\n# TYPE backfill_events_rejected_total counter"
        );
        let _ = writeln!(
            out,
            "backfill_events_rejected_total{{reason=\"validation\"}} {}",
            self.rejected_validation.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "backfill_events_rejected_total{{reason=\"internal\"}} {}",
            self.rejected_internal.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "backfill_store_errors_total",
            "Requests the store failed (answered 503).",
            &self.store_errors,
        );
        let name = "backfill_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request latency by route.\n# TYPE {name} histogram"
        );
        if let Ok(latency) = self.request_latency.lock() {
            for (route, h) in latency.iter() {
                h.render(&mut out, name, &format!("route=\"{route}\""));
            }
        }
        let name = "backfill_store_commit_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of each durable group commit.\n# TYPE {name} histogram"
        );
        self.commit_latency.render(&mut out, name, "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.0001);
        h.observe(0.02);
        h.observe(60.0);
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
