//! Prometheus metrics at `/metrics`: request counts by status class and a
//! latency histogram of server time, kept in atomics (no lock on the hot path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 2_000_000,
];

#[derive(Default)]
pub struct Metrics {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    pub audit_events: AtomicU64,
    pub sign_in_failures: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, status: u16, elapsed_us: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(elapsed_us, Ordering::Relaxed);
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            if elapsed_us <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP keyward_http_requests_total HTTP requests by status class.\n");
        out.push_str("# TYPE keyward_http_requests_total counter\n");
        for (i, c) in self.by_class.iter().enumerate() {
            out.push_str(&format!(
                "keyward_http_requests_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                c.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP keyward_http_request_duration_seconds Server time per request.\n");
        out.push_str("# TYPE keyward_http_request_duration_seconds histogram\n");
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            out.push_str(&format!(
                "keyward_http_request_duration_seconds_bucket{{le=\"{}\"}} {}\n",
                *bound as f64 / 1e6,
                self.buckets[i].load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "keyward_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!(
            "keyward_http_request_duration_seconds_sum {}\n",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!(
            "keyward_http_request_duration_seconds_count {count}\n"
        ));
        out.push_str("# HELP keyward_audit_events_total Audit events appended by this node.\n");
        out.push_str("# TYPE keyward_audit_events_total counter\n");
        out.push_str(&format!(
            "keyward_audit_events_total {}\n",
            self.audit_events.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP keyward_sign_in_failures_total Failed password sign-ins.\n");
        out.push_str("# TYPE keyward_sign_in_failures_total counter\n");
        out.push_str(&format!(
            "keyward_sign_in_failures_total {}\n",
            self.sign_in_failures.load(Ordering::Relaxed)
        ));
        out
    }
}

/// Middleware recording every request's status and server time.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(resp.status().as_u16(), start.elapsed().as_micros() as u64);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe(200, 50);
        m.observe(404, 3_000);
        let text = m.render();
        assert!(text.contains("keyward_http_requests_total{class=\"2xx\"} 1"));
        assert!(text.contains("keyward_http_requests_total{class=\"4xx\"} 1"));
        assert!(text.contains("keyward_http_request_duration_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("keyward_http_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("keyward_http_request_duration_seconds_count 2"));
    }
}
