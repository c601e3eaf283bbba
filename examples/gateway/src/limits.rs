//! Per-tenant rate limits, per-tenant caps on open event streams, and the replay cache of
//! `Idempotency-Key`s.
//!
//! The rate limit is a fixed window per tenant, written here rather than taken from
//! `governor`: the quota headers (`X-Stella-Quota-Limit/-Remaining/-Reset`) need the window's
//! count and end, which a GCRA limiter does not expose.

use exportcore::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests allowed per tenant per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per window.
    pub requests: u32,
    /// Window length.
    pub window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { requests: 6_000, window: Duration::from_secs(60) }
    }
}

/// The quota state reported on every authenticated reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// `X-Stella-Quota-Limit`.
    pub limit: u32,
    /// `X-Stella-Quota-Remaining`.
    pub remaining: u32,
    /// `X-Stella-Quota-Reset`: seconds until the window ends.
    pub reset_secs: u64,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    cfg: RateLimit,
    windows: Mutex<HashMap<TenantId, (Instant, u32)>>,
}

impl RateLimiter {
    pub(crate) fn new(cfg: RateLimit) -> Self {
        Self { cfg, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts a request of `tenant`: `Ok` with the quota left, `Err` with the quota when over.
    pub(crate) fn check(&self, tenant: &TenantId) -> Result<Quota, Quota> {
        let now = Instant::now();
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < self.cfg.window);
        }
        let slot = w.entry(tenant.clone()).or_insert((now, 0));
        if now.duration_since(slot.0) >= self.cfg.window {
            *slot = (now, 0);
        }
        let reset = self.cfg.window.saturating_sub(now.duration_since(slot.0));
        let reset_secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
        if slot.1 >= self.cfg.requests {
            return Err(Quota { limit: self.cfg.requests, remaining: 0, reset_secs });
        }
        slot.1 += 1;
        Ok(Quota { limit: self.cfg.requests, remaining: self.cfg.requests - slot.1, reset_secs })
    }
}

/// Things a tenant holds open (event streams, requests in flight), capped per tenant and
/// counted in a gauge.
#[derive(Debug)]
pub(crate) struct TenantSlots {
    open: Mutex<HashMap<TenantId, usize>>,
    gauge: &'static str,
}

/// Holds one slot; released when dropped (the stream ended, the request was answered, the
/// client left).
#[derive(Debug)]
pub(crate) struct TenantSlot {
    slots: Arc<TenantSlots>,
    tenant: TenantId,
}

impl TenantSlots {
    pub(crate) fn new(gauge: &'static str) -> Arc<Self> {
        Arc::new(Self { open: Mutex::default(), gauge })
    }

    pub(crate) fn acquire(self: &Arc<Self>, tenant: &TenantId, cap: usize) -> Option<TenantSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.clone()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        metrics::gauge!(self.gauge).increment(1.0);
        Some(TenantSlot { slots: self.clone(), tenant: tenant.clone() })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
        metrics::gauge!(self.slots.gauge).decrement(1.0);
    }
}

/// A stored first reply to a `POST` with an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub(crate) struct StoredReply {
    pub(crate) body_hash: [u8; 32],
    pub(crate) status: u16,
    pub(crate) body: bytes::Bytes,
    pub(crate) location: Option<String>,
}

/// (tenant, route, `Idempotency-Key`).
pub(crate) type ReplyKey = (TenantId, String, String);

/// First replies by (tenant, route, key), for 24 hours, bounded in count and, per tenant, in
/// entries and bytes: one tenant filling the cache evicts its own oldest replies, never
/// another tenant's, and cannot grow the server's memory past its share.
#[derive(Debug, Default)]
pub(crate) struct ReplyCache {
    entries: Mutex<HashMap<ReplyKey, (Instant, StoredReply)>>,
}

const REPLY_TTL: Duration = Duration::from_secs(24 * 3600);
const REPLY_CAPACITY: usize = 100_000;
/// A tenant's share: entries and bytes of reply bodies.
const REPLY_TENANT_ENTRIES: usize = 10_000;
const REPLY_TENANT_BYTES: usize = 32 << 20;

impl ReplyCache {
    pub(crate) fn get(&self, key: &ReplyKey) -> Option<StoredReply> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.get(key).filter(|(at, _)| at.elapsed() < REPLY_TTL).map(|(_, r)| r.clone())
    }

    pub(crate) fn put(&self, key: ReplyKey, reply: StoredReply) {
        if reply.body.len() > REPLY_TENANT_BYTES {
            // Not kept: a retry is answered by the store's own checks (idempotent runs, a
            // profile name that exists).
            return;
        }
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.contains_key(&key) {
            return;
        }
        loop {
            let (count, bytes, oldest) = e.iter().filter(|(k, _)| k.0 == key.0).fold(
                (0usize, 0usize, None::<(Instant, ReplyKey)>),
                |(n, b, old), (k, (at, r))| {
                    let old = match old {
                        Some((o, ok)) if o <= *at => Some((o, ok)),
                        _ => Some((*at, k.clone())),
                    };
                    (n + 1, b + r.body.len(), old)
                },
            );
            let full = count >= REPLY_TENANT_ENTRIES || bytes + reply.body.len() > REPLY_TENANT_BYTES;
            match (full, oldest) {
                (true, Some((_, k))) => {
                    e.remove(&k);
                }
                _ => break,
            }
        }
        if e.len() >= REPLY_CAPACITY {
            e.retain(|_, (at, _)| at.elapsed() < REPLY_TTL);
            if e.len() >= REPLY_CAPACITY {
                // Still full of live entries (over ten tenants at their share): the oldest tenth.
                let mut ages: Vec<_> = e.iter().map(|(k, (at, _))| (*at, k.clone())).collect();
                ages.sort();
                for (_, k) in ages.into_iter().take(REPLY_CAPACITY / 10) {
                    e.remove(&k);
                }
            }
        }
        e.insert(key, (Instant::now(), reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_and_resets() {
        let l = RateLimiter::new(RateLimit { requests: 2, window: Duration::from_millis(200) });
        let t = TenantId::from_static("a");
        assert_eq!(l.check(&t).map(|q| q.remaining), Ok(1));
        assert_eq!(l.check(&t).map(|q| q.remaining), Ok(0));
        let over = l.check(&t).expect_err("third is over");
        assert!(over.reset_secs >= 1);
        assert!(l.check(&TenantId::from_static("b")).is_ok(), "tenants are apart");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.check(&t).map(|q| q.remaining), Ok(1), "a new window");
    }

    /// One tenant storing large replies evicts its own oldest, stays within its byte share,
    /// and never evicts another tenant's reply.
    #[test]
    fn a_tenant_filling_the_reply_cache_evicts_only_its_own() {
        let cache = ReplyCache::default();
        let key = |t: &'static str, k: usize| (TenantId::from_static(t), "POST /profiles".to_owned(), format!("k{k}"));
        let reply = |n: usize| StoredReply {
            body_hash: [0; 32],
            status: 201,
            body: bytes::Bytes::from(vec![b'x'; n]),
            location: None,
        };
        cache.put(key("acme", 0), reply(10));
        for k in 0..40 {
            cache.put(key("globex", k), reply(1 << 20));
        }
        assert!(cache.get(&key("acme", 0)).is_some(), "another tenant's reply stays");
        assert!(cache.get(&key("globex", 0)).is_none(), "the oldest of its own went");
        assert!(cache.get(&key("globex", 39)).is_some(), "the newest is kept");
        let kept = (0..40).filter(|k| cache.get(&key("globex", *k)).is_some()).count();
        assert_eq!(kept, REPLY_TENANT_BYTES / (1 << 20), "within its byte share");
        cache.put(key("globex", 99), reply(REPLY_TENANT_BYTES + 1));
        assert!(cache.get(&key("globex", 99)).is_none(), "a reply over the share is not kept");
    }

    #[test]
    fn tenant_slots_are_capped_and_released() {
        let s = TenantSlots::new("test_slots_open");
        let t = TenantId::from_static("a");
        let a = s.acquire(&t, 2);
        let b = s.acquire(&t, 2);
        assert!(a.is_some() && b.is_some());
        assert!(s.acquire(&t, 2).is_none());
        drop(a);
        assert!(s.acquire(&t, 2).is_some());
    }
}
