//! What the lock manager keeps for one node: its name tables, and the
//! records of domains, resources (queues and value block), locks and
//! client connections. Records only, with the few questions they answer
//! about themselves; [`Dlm`](super::Dlm) changes them.
//!
//! May depend on: std, the core's types, the node-lock record (`cluster`).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, DefaultHasher, Hasher};

use super::cluster;
use super::{ClientId, Cred, Holder, LVB_LEN, LockId, Lvb, Millis, Mode, NodeId};

/// A resource, by domain and name.
pub(super) type ResKey = (Box<[u8]>, Box<[u8]>);

/// Hashes resource names for the core's tables: SipHash keyed by the lock
/// manager's hash key. The same key gives the same iteration order, so a
/// simulated run replays exactly; lockd picks a random key, so names that
/// collide cannot be worked out in advance. No `Default`: every table is
/// made with its lock manager's key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameHasher(pub(super) u64);

impl BuildHasher for NameHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// A table keyed by resource name.
pub(crate) type NameMap<V> = HashMap<Box<[u8]>, V, NameHasher>;

/// The state of a resource's value block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LvbState {
    pub(super) value: Lvb,
    /// Number of writes; 0 = never written.
    pub(super) seq: u64,
    pub(super) valid: bool,
}

impl LvbState {
    pub(super) const PRISTINE: LvbState = LvbState {
        value: [0; LVB_LEN],
        seq: 0,
        valid: true,
    };
    pub(super) fn is_pristine(&self) -> bool {
        self.seq == 0 && self.valid
    }
}

#[derive(Debug, Default)]
pub(super) struct Queues {
    pub(super) granted: Vec<LockId>,
    pub(super) converting: Vec<LockId>,
    pub(super) waiting: Vec<LockId>,
}

impl Queues {
    pub(super) fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }
    pub(super) fn remove(&mut self, id: LockId) {
        for q in [&mut self.granted, &mut self.converting, &mut self.waiting] {
            if let Some(p) = q.iter().position(|&l| l == id) {
                q.remove(p);
                return;
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Resource {
    pub(super) master: NodeId,
    /// The value block; in a cluster, this node's copy of it.
    pub(super) lvb: LvbState,
    /// None while no lock refers to the resource (keeps idle resources small).
    pub(super) queues: Option<Box<Queues>>,
    /// In a cluster: this node's lock on the resource at the cluster level.
    pub(super) node: Option<Box<cluster::NodeLock>>,
}

#[derive(Debug)]
pub(super) struct Domain {
    /// Stays until a forced leave.
    pub(super) pinned: bool,
    /// Connections that joined it without pinning (dlmfs mounts).
    pub(super) users: BTreeSet<ClientId>,
    /// Boxed values keep the table small: a hash table is up to half empty
    /// just after it grows, and an idle resource is mostly its value block.
    pub(super) resources: NameMap<Box<Resource>>,
}

impl Domain {
    pub(super) fn new(hash: NameHasher) -> Self {
        Domain {
            pinned: false,
            users: BTreeSet::new(),
            resources: NameMap::with_hasher(hash),
        }
    }
}

#[derive(Debug)]
pub(super) struct Lock {
    pub(super) domain: Box<[u8]>,
    pub(super) resource: Box<[u8]>,
    pub(super) node: NodeId,
    /// The connection that owns it; None for a persistent lock.
    pub(super) owner: Option<ClientId>,
    /// The connection waiting for the pending request, if any.
    pub(super) requester: Option<ClientId>,
    pub(super) cred: Cred,
    pub(super) granted: Option<Mode>,
    pub(super) requested: Option<Mode>,
    pub(super) deadline: Option<Millis>,
    /// Modes this lock has been told it blocks, since it was last granted.
    pub(super) basted: u8,
    /// The pending request is a trylock waiting for the master's answer.
    pub(super) noqueue: bool,
    /// The pending request needed a node-level request (not a cached grant).
    pub(super) remote: bool,
}

impl Lock {
    pub(super) fn notify(&self) -> Option<ClientId> {
        self.requester.or(self.owner)
    }
    pub(super) fn holder(&self, id: LockId) -> Holder {
        Holder {
            lock: id,
            node: self.node,
            pid: self.cred.pid,
            uid: self.cred.uid,
            granted: self.granted,
            requested: self.requested,
            persistent: self.owner.is_none(),
        }
    }
}

#[derive(Debug)]
pub(super) struct ClientState {
    pub(super) cred: Cred,
    /// Locks it owns.
    pub(super) locks: BTreeSet<LockId>,
    /// Persistent locks whose pending request it waits for.
    pub(super) pending: BTreeSet<LockId>,
    /// Domains it uses without pinning.
    pub(super) domains: BTreeSet<Box<[u8]>>,
}
