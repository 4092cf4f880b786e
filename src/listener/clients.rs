//! Open connections counted per client, so that one client cannot take every place under
//! `MAX_CONNECTIONS` and shut the others out. A connection's peer address is all that is known
//! of it before its first request, so a client is its address (an IPv6 client its prefix,
//! `IPV6_CLIENT_PREFIX`, as for the rate limits); a trusted proxy's connections
//! (`TRUSTED_PROXIES`) are not counted, as each carries many clients.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use ipnet::IpNet;

use crate::{extensions::ClientIp, layers::client_ip::is_trusted_proxy};

/// The per-client cap for a connection cap when none is configured: a quarter of it, so that
/// four clients are needed to fill it, but never below 16 (nor above the cap itself), so
/// that a small cap still lets a client hold a few connections.
pub fn default_max_connections_per_client(max_connections: usize) -> usize {
    (max_connections / 4).max(max_connections.min(16))
}

/// Counts each client's open connections; a client only has an entry while it has one open,
/// so the map holds at most `MAX_CONNECTIONS` entries.
#[derive(Debug)]
pub(super) struct ClientConnections {
    cap: usize,
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    /// Changed under the lock; read without it by the clients' connections ([`ClientCount`]).
    open: Mutex<HashMap<IpNet, ClientCount>>,
}

/// How many connections one client has open, as its connections see it.
#[derive(Debug, Clone, Default)]
pub(super) struct ClientCount(Arc<AtomicUsize>);

impl ClientCount {
    pub(super) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A client already holds its cap of connections.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AtCap(pub(super) IpNet);

impl ClientConnections {
    pub(super) fn new(cap: usize, trusted: Vec<IpNet>, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(Self {
            cap,
            trusted,
            ipv6_prefix,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `peer` until the returned place is dropped; `None` for a
    /// trusted proxy, which is not counted; [`AtCap`] when its client holds the cap already.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Option<ClientPlace>, AtCap> {
        if is_trusted_proxy(peer, &self.trusted) {
            return Ok(None);
        }
        let key = ClientIp::new(peer, self.ipv6_prefix).key();
        // Nothing under the lock panics; were it poisoned, the counts are still whole.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_default();
        if count.get() >= self.cap {
            return Err(AtCap(key));
        }
        count.0.fetch_add(1, Ordering::Relaxed);
        Ok(Some(ClientPlace {
            clients: Arc::clone(self),
            key,
            count: count.clone(),
        }))
    }

    /// Connections counted for `peer`'s client now (for tests).
    #[cfg(test)]
    pub(super) fn open(&self, peer: IpAddr) -> usize {
        let key = ClientIp::new(peer, self.ipv6_prefix).key();
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&key).map_or(0, ClientCount::get)
    }

    /// Clients with connections counted now (for tests).
    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection counted for its client until dropped.
#[derive(Debug)]
pub(super) struct ClientPlace {
    clients: Arc<ClientConnections>,
    key: IpNet,
    count: ClientCount,
}

impl ClientPlace {
    /// The client's count of open connections, to read while this one is open.
    pub(super) fn count(&self) -> ClientCount {
        self.count.clone()
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.count.0.fetch_sub(1, Ordering::Relaxed) == 1 {
            open.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{AtCap, ClientConnections, default_max_connections_per_client};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_client_holds_at_most_its_cap_and_its_places_come_back_when_dropped() {
        let clients = ClientConnections::new(2, vec!["10.0.0.0/8".parse().expect("net")], 64);
        let first = clients.admit(ip("192.0.2.7")).expect("under the cap");
        let second = clients.admit(ip("192.0.2.7")).expect("under the cap");
        assert!(first.is_some() && second.is_some());
        assert_eq!(
            clients.admit(ip("192.0.2.7")).map(|_| ()),
            Err(AtCap("192.0.2.7/32".parse().expect("net")))
        );
        // Another client, and an IPv4 address written as IPv6, are their own.
        assert!(clients.admit(ip("192.0.2.8")).expect("own cap").is_some());
        let mapped = clients.admit(ip("::ffff:192.0.2.9")).expect("own cap");
        assert_eq!(clients.open(ip("192.0.2.9")), 1);
        let count = mapped.as_ref().expect("counted").count();
        assert_eq!(count.get(), 1, "what its connections read");
        drop(mapped);
        assert_eq!(count.get(), 0);
        // A trusted proxy is not counted, however many it opens.
        for _ in 0..5 {
            assert!(
                clients
                    .admit(ip("10.1.2.3"))
                    .expect("not counted")
                    .is_none()
            );
        }
        assert_eq!(clients.open(ip("10.1.2.3")), 0);

        drop(first);
        assert_eq!(clients.open(ip("192.0.2.7")), 1);
        let again = clients.admit(ip("192.0.2.7")).expect("a place came back");
        drop((second, again));
        assert_eq!(clients.open(ip("192.0.2.7")), 0);
        assert_eq!(clients.clients(), 0, "a client with none open has no entry");
    }

    #[test]
    fn an_ipv6_client_is_its_prefix() {
        let clients = ClientConnections::new(1, Vec::new(), 64);
        let held = clients.admit(ip("2001:db8:1:2::1")).expect("under the cap");
        assert!(held.is_some());
        assert!(
            clients.admit(ip("2001:db8:1:2:ffff::9")).is_err(),
            "another address of the same /64"
        );
        assert!(clients.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn the_default_is_a_quarter_of_the_connection_cap_and_at_least_sixteen_or_the_cap() {
        assert_eq!(default_max_connections_per_client(10_000), 2_500);
        assert_eq!(default_max_connections_per_client(192), 48);
        assert_eq!(default_max_connections_per_client(40), 16);
        assert_eq!(default_max_connections_per_client(3), 3);
        assert_eq!(default_max_connections_per_client(1), 1);
    }
}
