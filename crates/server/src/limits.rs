//! Brakes on guessing and flooding, per node and in memory: token buckets
//! keyed by a login or a client address (sign-in, enrollment, pairing
//! requests), a bound on concurrent password hashes, and the client address
//! itself (the TCP peer, or `X-Forwarded-For` when the peer is a configured
//! trusted proxy).
//!
//! In memory on purpose: a limit that needs the store on every attempt
//! would let the attempts load the store. Each node keeps its own buckets,
//! so N nodes allow N times the rate: the limits are set so that this
//! stays far from useful guessing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;

/// Buckets kept at most; beyond, full ones are dropped first.
const MAX_KEYS: usize = 100_000;

/// `capacity` attempts at once, one more every `capacity / per`.
pub struct Limiter {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(capacity: u32, per: Duration) -> Limiter {
        Limiter {
            capacity: f64::from(capacity.max(1)),
            rate: f64::from(capacity.max(1)) / per.as_secs_f64().max(0.001),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.rate).min(self.capacity),
            at: now,
        }
    }

    /// The wait before `key` has an attempt left (`None`: it has one now),
    /// without spending it.
    pub fn check(&self, key: &str, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().expect("limiter lock");
        let b = buckets.get(key).map(|b| self.refilled(*b, now))?;
        self.wait(b)
    }

    /// Spends one attempt of `key`; the wait when none is left (nothing is
    /// spent then).
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (cap, rate) = (self.capacity, self.rate);
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + elapsed * rate < cap
            });
        }
        let b = buckets
            .get(key)
            .map(|b| self.refilled(*b, now))
            .unwrap_or(Bucket {
                tokens: self.capacity,
                at: now,
            });
        if let Some(wait) = self.wait(b) {
            return Err(wait);
        }
        buckets.insert(
            key.to_string(),
            Bucket {
                tokens: b.tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    fn wait(&self, b: Bucket) -> Option<Duration> {
        (b.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
    }
}

/// The limiters of one node.
pub struct Limits {
    /// Failed sign-ins per login.
    pub sign_in_login: Limiter,
    /// Sign-in and enrollment attempts per client address.
    pub sign_in_address: Limiter,
    /// Pairing requests per client address (unauthenticated).
    pub pairing_address: Limiter,
    /// One audit record a minute per limited login and address.
    pub limited_audit: Limiter,
    /// Password hashes (argon2, 19 MiB each) running at once.
    pub hashing: tokio::sync::Semaphore,
}

/// Argon2 hashes at once: the blocking pool and memory stay bounded under
/// a flood of sign-ins.
pub const CONCURRENT_HASHES: usize = 4;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sign_in_login: Limiter::new(5, Duration::from_secs(5 * 60)),
            sign_in_address: Limiter::new(30, Duration::from_secs(60)),
            pairing_address: Limiter::new(10, Duration::from_secs(60)),
            limited_audit: Limiter::new(1, Duration::from_secs(60)),
            hashing: tokio::sync::Semaphore::new(CONCURRENT_HASHES),
        }
    }
}

/// The client's address: the TCP peer, or, when the peer is one of the
/// `trusted` proxies, the last address in `X-Forwarded-For` that is not
/// itself a trusted proxy (what a client sends there is never trusted on
/// its own).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let Some(peer) = peer else {
        return unknown;
    };
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .copied()
        .unwrap_or(peer)
}

/// The TCP peer of a request, when the server recorded it.
pub fn peer(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's address as an extractor (see [`client_ip`]); never fails.
pub struct ClientIp(pub IpAddr);

impl axum::extract::FromRequestParts<crate::app::AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &crate::app::AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(
            peer(&parts.extensions),
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// 429 with `Retry-After` (whole seconds, rounded up).
pub fn too_many(wait: Duration, what: &str) -> crate::error::ApiError {
    let secs = wait.as_secs() + 1;
    crate::error::ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many {what}; try again in {secs} seconds"),
    )
    .retry_after(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_then_refills_at_its_rate() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("alice", t0).is_ok());
        }
        let wait = l.take("alice", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(l.check("alice", t0), Some(wait));
        // Others are not affected.
        assert!(l.take("bob", t0).is_ok());
        // One attempt back after a third of the period.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(l.check("alice", t1), None);
        assert!(l.take("alice", t1).is_ok());
        assert!(l.take("alice", t1).is_err());
        // Never more than the capacity.
        let t2 = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.take("alice", t2).is_ok());
        }
        assert!(l.take("alice", t2).is_err());
    }

    #[test]
    fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.7".parse().unwrap(),
        );
        // From the proxy: the last address it added.
        assert_eq!(client_ip(Some(proxy), &h, &[proxy]), client);
        // From anyone else: the header is the client's word, ignored.
        assert_eq!(client_ip(Some(client), &h, &[proxy]), client);
        assert_eq!(client_ip(Some(proxy), &h, &[]), proxy);
        // A forged header behind the proxy: the proxy's own entry wins.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "garbage, 203.0.113.7".parse().unwrap());
        assert_eq!(client_ip(Some(proxy), &h, &[proxy]), client);
        assert_eq!(client_ip(Some(proxy), &HeaderMap::new(), &[proxy]), proxy);
    }
}
