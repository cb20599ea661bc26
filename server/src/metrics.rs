//! Counters and histograms exposed at `GET /metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The routes whose latency is tracked separately.
pub const ROUTES: [&str; 4] = ["/track/batch", "/track", "/api", "other"];

/// Every metric the server exports.
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
    /// Request latency per entry of [`ROUTES`].
    pub request_latency: [Histogram; ROUTES.len()],
    /// Duration of each group commit of the store.
    pub commit_latency: std::sync::Arc<Histogram>,
}

impl Metrics {
    /// The latency histogram for a matched route path.
    pub fn route_histogram(&self, path: &str) -> &Histogram {
        let i = match path {
            "/track/batch" => 0,
            "/track" => 1,
            p if p.starts_with("/api/") => 2,
            _ => 3,
        };
        &self.request_latency[i]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
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
        let name = "backfill_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request latency by route.\n# TYPE {name} histogram"
        );
        for (route, h) in ROUTES.iter().zip(&self.request_latency) {
            h.render(&mut out, name, &format!("route=\"{route}\""));
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
