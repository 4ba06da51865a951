//! An in-memory network of registry servers for tests, after raft-rs' own
//! test harness: every message sent waits in one queue until the test
//! delivers it, so a test decides when messages move and which are lost.
//! Faults are per link (`cut`) or per server (`isolate`), both undone by
//! `heal`.

use crate::transport::Network;
use raft::eraftpb::{Message, MessageType};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
struct State {
    in_flight: VecDeque<Message>,
    isolated: BTreeSet<u64>,
    /// Links cut, as (lower id, higher id).
    cut: BTreeSet<(u64, u64)>,
    /// Links cut one way, as (from, to).
    one_way: BTreeSet<(u64, u64)>,
    /// Messages of these types to these servers are dropped.
    dropped_kinds: Vec<(u64, MessageType)>,
}

/// The messages a [`MemNetwork::deliver`] took: those to hand to their
/// servers, and those the faults dropped.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Messages the faults let through, in the order sent: the test steps
    /// each into its `to` server.
    pub delivered: Vec<Message>,
    /// Messages an isolation or cut dropped, in the order sent; lost for good.
    pub dropped: Vec<Message>,
}

/// A network of servers in one process; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<State>>,
}

impl MemNetwork {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The [`Network`] server `id` sends through.
    pub fn endpoint(&self, id: u64) -> Arc<dyn Network> {
        Arc::new(Endpoint {
            id,
            net: self.clone(),
        })
    }

    /// Drops every message to and from `id` until [`heal`](Self::heal).
    pub fn isolate(&self, id: u64) {
        self.state().isolated.insert(id);
    }

    /// Drops every message between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        self.state().cut.insert((a.min(b), a.max(b)));
    }

    /// Drops every message from `from` to `to` (not the other way) until
    /// [`heal`](Self::heal): a server whose answers are lost.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.state().one_way.insert((from, to));
    }

    /// Drops every message of type `kind` sent to `to` until
    /// [`heal`](Self::heal): a server that hears some of its leader's
    /// messages and never the others.
    pub fn drop_kind(&self, to: u64, kind: MessageType) {
        self.state().dropped_kinds.push((to, kind));
    }

    /// Undoes every fault.
    pub fn heal(&self) {
        let mut state = self.state();
        state.isolated.clear();
        state.cut.clear();
        state.one_way.clear();
        state.dropped_kinds.clear();
    }

    /// Takes every message sent so far, in the order sent, split into those
    /// the faults let through and those they drop.
    pub fn deliver(&self) -> Delivery {
        let mut state = self.state();
        let mut out = Delivery::default();
        while let Some(m) = state.in_flight.pop_front() {
            let blocked = state.isolated.contains(&m.from)
                || state.isolated.contains(&m.to)
                || state.cut.contains(&(m.from.min(m.to), m.from.max(m.to)))
                || state.one_way.contains(&(m.from, m.to))
                || state.dropped_kinds.contains(&(m.to, m.get_msg_type()));
            if blocked {
                out.dropped.push(m);
            } else {
                out.delivered.push(m);
            }
        }
        out
    }
}

/// One server's side of a [`MemNetwork`].
#[derive(Debug)]
struct Endpoint {
    id: u64,
    net: MemNetwork,
}

impl Network for Endpoint {
    fn send(&self, messages: Vec<Message>) {
        let mut state = self.net.state();
        for mut m in messages {
            // raft-rs fills `from` in; a stray zero would hide a fault.
            if m.from == 0 {
                m.from = self.id;
            }
            state.in_flight.push_back(m);
        }
    }

    fn set_address(&self, _id: u64, _address: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_from(from);
        m.set_to(to);
        m
    }

    #[test]
    fn isolation_and_cuts_drop_messages_until_healed() {
        let net = MemNetwork::default();
        let (one, two) = (net.endpoint(1), net.endpoint(2));
        net.isolate(3);
        net.cut(2, 1);
        one.send(vec![message(1, 2), message(1, 3)]);
        two.send(vec![message(2, 1), message(2, 4)]);
        let d = net.deliver();
        let pairs = |ms: &[Message]| ms.iter().map(|m| (m.from, m.to)).collect::<Vec<_>>();
        assert_eq!(pairs(&d.delivered), vec![(2, 4)]);
        assert_eq!(pairs(&d.dropped), vec![(1, 2), (1, 3), (2, 1)]);
        net.heal();
        one.send(vec![message(1, 2), message(1, 3)]);
        assert_eq!(pairs(&net.deliver().delivered), vec![(1, 2), (1, 3)]);
    }
}
