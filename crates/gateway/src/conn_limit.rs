//! Caps on open client connections, overall (`server.max_connections`) and per client
//! address (`server.max_connections_per_client`), checked at accept before any TLS or
//! HTTP work: a connection past a cap is closed at once and counted in
//! `gateway_connections_refused_total{reason}`.
//!
//! Every worker is its own runtime, so the counts are shared: one atomic for the total
//! and a sharded map for the peers, whose entries go away when their count returns to
//! zero (memory follows the open connections, not the addresses ever seen). The caps are
//! read at each accept, so a reload changes them for the next connection.
//!
//! The client address here is the TCP peer (nothing of HTTP has been read yet), grouped
//! as rate limits group it (IPv6 by /64). Peers in `trusted_proxies` are load balancers
//! that carry many clients, so the per-client cap does not apply to them.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_telemetry::RefusedConnection;

/// Shards of the per-peer map: accepts on different workers rarely meet on one lock.
const SHARDS: usize = 16;

/// The caps to apply to one accept; 0 = no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: u32,
    /// `None` for a peer the per-client cap does not apply to (a trusted proxy).
    pub per_client: Option<u32>,
}

/// The open connections of the process, shared by every worker.
#[derive(Default)]
pub struct ConnectionLimits {
    open: AtomicU32,
    peers: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    hasher: std::hash::RandomState,
}

impl ConnectionLimits {
    /// Count a new connection from `peer`, or refuse it when a cap is reached. The
    /// returned permit gives the slot back when dropped.
    pub fn acquire(self: &Arc<Self>, peer: IpAddr, caps: Caps) -> Result<Permit, RefusedConnection> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if caps.total != 0 && before >= caps.total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(RefusedConnection::GlobalLimit);
        }
        let key = gateway_ratelimit::ip_bucket(peer);
        let mut shard = self.shard(key);
        let count = shard.entry(key).or_insert(0);
        if let Some(cap) = caps.per_client.filter(|&cap| cap != 0 && *count >= cap) {
            // `count` is at least `cap`, so the entry holds other connections and stays.
            tracing::debug!(%peer, cap, "per-client connection cap reached");
            drop(shard);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(RefusedConnection::PerClientLimit);
        }
        *count += 1;
        Ok(Permit { limits: self.clone(), key })
    }

    /// Connections open now, all peers together.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Peers with a connection open now.
    pub fn peers(&self) -> usize {
        self.peers.iter().map(|shard| lock(shard).len()).sum()
    }

    fn shard(&self, key: IpAddr) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        lock(&self.peers[self.hasher.hash_one(key) as usize % SHARDS])
    }

    fn release(&self, key: IpAddr) {
        let mut shard = self.shard(key);
        if let Some(count) = shard.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&key);
            }
        }
        drop(shard);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts are plain numbers: a panic elsewhere cannot leave a shard half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One open connection's slot; given back on drop.
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const CAPS: Caps = Caps { total: 3, per_client: Some(2) };

    #[test]
    fn per_client_cap_then_global_cap() {
        let limits = Arc::new(ConnectionLimits::default());
        let a1 = limits.acquire(ip("10.0.0.1"), CAPS);
        let a2 = limits.acquire(ip("10.0.0.1"), CAPS);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(limits.acquire(ip("10.0.0.1"), CAPS).err(), Some(RefusedConnection::PerClientLimit));
        let b1 = limits.acquire(ip("10.0.0.2"), CAPS);
        assert!(b1.is_ok());
        assert_eq!(limits.acquire(ip("10.0.0.3"), CAPS).err(), Some(RefusedConnection::GlobalLimit));
        assert_eq!(limits.open(), 3, "refusals give their slot back");
        drop(a1);
        assert!(limits.acquire(ip("10.0.0.1"), CAPS).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn entries_go_away_at_zero() {
        let limits = Arc::new(ConnectionLimits::default());
        let permits: Vec<Permit> = (0..50)
            .filter_map(|i| limits.acquire(ip(&format!("10.0.1.{i}")), Caps { total: 0, per_client: Some(1) }).ok())
            .collect();
        assert_eq!((limits.open(), limits.peers()), (50, 50));
        drop(permits);
        assert_eq!((limits.open(), limits.peers()), (0, 0));
        // A refusal by the global cap leaves no entry behind.
        let _one = limits.acquire(ip("10.0.2.1"), Caps { total: 1, per_client: Some(1) });
        assert!(limits.acquire(ip("10.0.2.2"), Caps { total: 1, per_client: Some(1) }).is_err());
        assert_eq!(limits.peers(), 1);
    }

    #[test]
    fn trusted_peers_and_no_caps() {
        let limits = Arc::new(ConnectionLimits::default());
        let lb = Caps { total: 0, per_client: None };
        let permits: Vec<Permit> = (0..10).filter_map(|_| limits.acquire(ip("127.0.0.1"), lb).ok()).collect();
        assert_eq!(permits.len(), 10);
    }

    #[test]
    fn ipv6_clients_count_by_64() {
        let limits = Arc::new(ConnectionLimits::default());
        let caps = Caps { total: 0, per_client: Some(1) };
        let _a = limits.acquire(ip("2001:db8::1"), caps).ok();
        assert_eq!(limits.acquire(ip("2001:db8::2"), caps).err(), Some(RefusedConnection::PerClientLimit));
        assert!(limits.acquire(ip("2001:db8:0:1::1"), caps).is_ok());
    }
}
