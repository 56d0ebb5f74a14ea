//! Client requests on one node: joining and leaving domains, new locks,
//! conversions (with conversion deadlock), unlock, cancel, and the value
//! block, with who may do what to which lock.
//!
//! May depend on: the core's types and records, the queues, the node-lock
//! gate and membership of the cluster layer (`node`).

use std::collections::BTreeSet;

use super::node::Gate;
use super::queues::compatible_with_holders;
use super::state::{Domain, Lock, LvbState, Resource};
use super::{
    ClientId, Cred, Dlm, DlmError, Event, Failure, Holder, LockId, LockRequest, LostReason,
    MAX_NAME_LEN, Millis, Mode, Reply, Request,
};

pub(super) fn check_name(what: &'static str, name: &[u8]) -> Result<(), DlmError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DlmError::BadName {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

impl Dlm {
    pub(super) fn request(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        request: Request,
    ) -> Result<(), DlmError> {
        match request {
            Request::Join { domain, pin } => {
                check_name("domain", &domain)?;
                let hash = self.hash;
                let d = self
                    .domains
                    .entry(domain.clone().into())
                    .or_insert_with(|| Domain::new(hash));
                if pin {
                    d.pinned = true;
                } else {
                    d.users.insert(client);
                    self.clients
                        .get_mut(&client)
                        .expect("known client")
                        .domains
                        .insert(domain.clone().into());
                }
                if self.cluster.is_some() && !self.domain_running(&domain) {
                    // Answered once the cluster has let this node in.
                    self.dc_mut(&domain).join_waiters.push((client, tag));
                    self.drive(&domain);
                } else {
                    self.reply(client, tag, Reply::Ok);
                }
                Ok(())
            }
            Request::Leave { domain, force } => {
                if !self.domains.contains_key(&domain[..]) {
                    return Err(DlmError::NoSuchDomain(
                        String::from_utf8_lossy(&domain).into_owned(),
                    ));
                }
                if force {
                    self.leave_domain(cred, &domain)?;
                    if self.cluster.is_some() {
                        // Answered once the other nodes have taken over.
                        self.dc_mut(&domain).leave_waiters.push((client, tag));
                        self.drive(&domain);
                        return Ok(());
                    }
                } else {
                    let d = self.domains.get_mut(&domain[..]).expect("checked");
                    d.users.remove(&client);
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.domains.remove(&domain[..]);
                    }
                    self.maybe_free_domain(&domain);
                }
                self.reply(client, tag, Reply::Ok);
                Ok(())
            }
            Request::Lock(req) => self.lock(now, client, cred, tag, req),
            Request::Convert {
                lock,
                mode,
                noqueue,
                bast_on_busy,
                timeout_ms,
            } => self.convert(
                now,
                client,
                cred,
                tag,
                lock,
                mode,
                noqueue,
                bast_on_busy,
                timeout_ms,
            ),
            Request::Unlock { lock } => self.unlock(client, cred, tag, lock),
            Request::Cancel { lock } => {
                self.authorize(client, cred, lock, false)?;
                let l = &self.locks[&lock];
                if l.requested.is_none() {
                    return Err(DlmError::NothingToCancel(lock));
                }
                self.reply(client, tag, Reply::Ok);
                self.end_request(lock, Failure::Cancelled);
                Ok(())
            }
            Request::LvbGet { lock } => {
                self.authorize_lvb(client, cred, lock)?;
                let l = &self.locks[&lock];
                let held = l.granted.ok_or(DlmError::NotGranted(lock))?;
                if !held.can_read_lvb() {
                    return Err(DlmError::ModeTooLow {
                        lock,
                        held,
                        need: Mode::CR,
                    });
                }
                let lvb = self.resource(&l.domain, &l.resource).lvb;
                self.reply(
                    client,
                    tag,
                    Reply::Lvb {
                        value: lvb.value,
                        valid: lvb.valid,
                    },
                );
                Ok(())
            }
            Request::LvbSet { lock, value } => {
                self.authorize_lvb(client, cred, lock)?;
                let l = &self.locks[&lock];
                let held = l.granted.ok_or(DlmError::NotGranted(lock))?;
                if !held.can_write_lvb() {
                    return Err(DlmError::ModeTooLow {
                        lock,
                        held,
                        need: Mode::PW,
                    });
                }
                let (d, r) = (l.domain.clone(), l.resource.clone());
                let res = self.resource_mut(&d, &r);
                res.lvb.value = value;
                res.lvb.seq += 1;
                res.lvb.valid = true;
                if let Some(n) = res.node.as_deref_mut() {
                    n.dirty = true;
                }
                self.reply(client, tag, Reply::Ok);
                Ok(())
            }
        }
    }

    /// Checks that `client` may act on `lock`: its own lock, or a persistent
    /// lock of its uid (root: any persistent lock; with `break_any`, any lock).
    fn authorize(
        &self,
        client: ClientId,
        cred: Cred,
        lock: LockId,
        break_any: bool,
    ) -> Result<(), DlmError> {
        let l = self.locks.get(&lock).ok_or(DlmError::NoSuchLock(lock))?;
        match l.owner {
            Some(owner) if owner == client => Ok(()),
            Some(_) if break_any && cred.is_root() => Ok(()),
            Some(_) => Err(DlmError::Permission(format!(
                "lock {lock} belongs to another connection (pid {})",
                l.cred.pid
            ))),
            None if l.cred.uid == cred.uid || cred.is_root() => Ok(()),
            None => Err(DlmError::Permission(format!(
                "lock {lock} belongs to uid {}",
                l.cred.uid
            ))),
        }
    }

    /// Value blocks may be read and written through any lock of the caller's
    /// uid (so a command run under `dlmctl lock` can use its lock), or by root.
    fn authorize_lvb(&self, client: ClientId, cred: Cred, lock: LockId) -> Result<(), DlmError> {
        let l = self.locks.get(&lock).ok_or(DlmError::NoSuchLock(lock))?;
        if l.owner == Some(client) || l.cred.uid == cred.uid || cred.is_root() {
            Ok(())
        } else {
            Err(DlmError::Permission(format!(
                "lock {lock} belongs to uid {}",
                l.cred.uid
            )))
        }
    }

    fn new_lock_id(&mut self) -> LockId {
        let id = LockId((u64::from(self.node.0) << 56) | self.next_lock);
        self.next_lock += 1;
        id
    }

    fn lock(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        req: LockRequest,
    ) -> Result<(), DlmError> {
        check_name("domain", &req.domain)?;
        check_name("resource", &req.resource)?;
        let id = self.new_lock_id();
        let node = self.node;
        let uses = self.clients[&client].domains.contains(&req.domain[..]);
        let (d, r): (Box<[u8]>, Box<[u8]>) = (req.domain.into(), req.resource.into());
        if !self.domains.contains_key(&d) {
            self.domains.insert(d.clone(), Domain::new(self.hash));
        }
        let domain = self.domains.get_mut(&d).expect("just ensured");
        // A lock joins its domain for good unless this client uses it explicitly.
        if !uses {
            domain.pinned = true;
        }
        if !domain.resources.contains_key(&r) {
            domain.resources.insert(
                r.clone(),
                Box::new(Resource {
                    master: node,
                    lvb: LvbState::PRISTINE,
                    queues: None,
                    node: None,
                }),
            );
        }
        domain
            .resources
            .get_mut(&r)
            .expect("just ensured")
            .queues
            .get_or_insert_with(Default::default);
        let persistent = req.flags.persistent;
        self.locks.insert(
            id,
            Lock {
                domain: d,
                resource: r,
                node,
                owner: (!persistent).then_some(client),
                requester: Some(client),
                cred,
                granted: None,
                requested: Some(req.mode),
                deadline: None,
                basted: 0,
                noqueue: false,
                remote: false,
            },
        );
        let c = self.clients.get_mut(&client).expect("known client");
        if persistent {
            c.pending.insert(id);
        } else {
            c.locks.insert(id);
        }
        self.counters.lock_requests += 1;
        self.reply(client, tag, Reply::LockAccepted { lock: id });

        let (grantable, gate) = self.with_names(id, |s, d, r| {
            let q = s.queues(d, r);
            let grantable = q.converting.is_empty()
                && q.waiting.is_empty()
                && compatible_with_holders(&s.locks, q, id, req.mode);
            (grantable, s.node_gate(d, r, req.mode, false))
        });
        // In a cluster, a trylock the node lock does not cover asks the
        // master; one that waits behind a blocked node lock is busy.
        let ask = grantable && gate == Gate::Ask;
        if grantable || ask || !req.flags.noqueue {
            self.with_names(id, |s, d, r| s.queues_mut(d, r).waiting.push(id));
        }
        if grantable && gate == Gate::Yes {
            self.grant(id);
        } else if ask && req.flags.noqueue {
            let l = self.locks.get_mut(&id).expect("exists");
            l.noqueue = true;
            let (d, r) = (l.domain.clone(), l.resource.clone());
            self.grant_pending(&d, &r);
            self.drive(&d);
        } else if req.flags.noqueue {
            let blockers = self.blockers(id, req.mode);
            if req.flags.bast_on_busy {
                self.bast_conflicting(id, req.mode);
            }
            self.counters.busy += 1;
            let l = self.forget(id);
            self.event(
                Some(client),
                Event::Failed {
                    lock: id,
                    failure: Failure::Busy { blockers },
                },
            );
            self.maybe_free(&l.domain, &l.resource);
        } else {
            self.queue_wait(now, id, req.timeout_ms);
            if self.cluster.is_some() {
                // (Names cloned: granting borrows them from the lock.)
                let l = &self.locks[&id];
                let (d, r) = (l.domain.clone(), l.resource.clone());
                self.grant_pending(&d, &r);
                self.drive(&d);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn convert(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        id: LockId,
        mode: Mode,
        noqueue: bool,
        bast_on_busy: bool,
        timeout_ms: Option<u64>,
    ) -> Result<(), DlmError> {
        self.authorize(client, cred, id, false)?;
        let l = &self.locks[&id];
        let held = l.granted.ok_or(DlmError::NotGranted(id))?;
        if l.requested.is_some() {
            return Err(DlmError::Pending(id));
        }
        let (d, r) = (l.domain.clone(), l.resource.clone());
        let persistent = l.owner.is_none();
        self.counters.convert_requests += 1;
        self.reply(client, tag, Reply::Ok);
        {
            let l = self.locks.get_mut(&id).expect("exists");
            l.requester = Some(client);
            l.requested = Some(mode);
        }
        if persistent {
            self.clients
                .get_mut(&client)
                .expect("known client")
                .pending
                .insert(id);
        }
        let q = self.queues(&d, &r);
        if mode == held || compatible_with_holders(&self.locks, q, id, mode) {
            let gate = if mode == held {
                Gate::Yes
            } else {
                self.node_gate(&d, &r, mode, true)
            };
            if gate == Gate::Yes {
                self.grant(id);
                self.grant_pending(&d, &r);
                return Ok(());
            }
            // The node lock must go up first: queue it as a conversion and
            // let the node ask its master (a trylock asks with no queueing).
            let q = self.queues_mut(&d, &r);
            q.granted.retain(|&x| x != id);
            q.converting.push(id);
            if noqueue {
                self.locks.get_mut(&id).expect("exists").noqueue = true;
            } else {
                self.queue_wait(now, id, timeout_ms);
            }
            self.grant_pending(&d, &r);
            return Ok(());
        }
        // Conversion deadlock: our granted mode blocks a conversion queued ahead.
        let deadlocked: Vec<Holder> = q
            .converting
            .iter()
            .map(|c| (c, &self.locks[c]))
            .filter(|(_, c)| !held.compatible(c.requested.expect("converting")))
            .map(|(&cid, c)| c.holder(cid))
            .collect();
        if !deadlocked.is_empty() {
            self.counters.deadlocks += 1;
            self.finish_failed_convert(
                id,
                Failure::Deadlock {
                    blockers: deadlocked,
                },
            );
            return Ok(());
        }
        if noqueue {
            let blockers = self.blockers(id, mode);
            if bast_on_busy {
                self.bast_conflicting(id, mode);
            }
            self.counters.busy += 1;
            self.finish_failed_convert(id, Failure::Busy { blockers });
            return Ok(());
        }
        let q = self.queues_mut(&d, &r);
        q.granted.retain(|&x| x != id);
        q.converting.push(id);
        self.queue_wait(now, id, timeout_ms);
        Ok(())
    }

    fn unlock(
        &mut self,
        client: ClientId,
        cred: Cred,
        tag: u64,
        id: LockId,
    ) -> Result<(), DlmError> {
        self.authorize(client, cred, id, true)?;
        let l = &self.locks[&id];
        let broken = l.owner.filter(|&o| o != client);
        let pending_to = l.requested.is_some().then_some(l.requester).flatten();
        let pending = l.requested.is_some();
        self.reply(client, tag, Reply::Ok);
        if let Some(owner) = broken {
            self.event(
                Some(owner),
                Event::Lost {
                    lock: id,
                    reason: LostReason::BrokenByRoot,
                },
            );
        } else if pending {
            self.event(
                pending_to,
                Event::Failed {
                    lock: id,
                    failure: Failure::Cancelled,
                },
            );
        }
        self.release(id);
        Ok(())
    }

    /// A node-level leave: every lock in the domain goes, then the domain.
    fn leave_domain(&mut self, cred: Cred, domain: &[u8]) -> Result<(), DlmError> {
        let ids: Vec<LockId> = self
            .locks
            .iter()
            .filter(|(_, l)| &l.domain[..] == domain)
            .map(|(&id, _)| id)
            .collect();
        let others: BTreeSet<u32> = ids
            .iter()
            .map(|id| self.locks[id].cred.uid)
            .filter(|&u| u != cred.uid)
            .collect();
        if !others.is_empty() && !cred.is_root() {
            return Err(DlmError::Permission(format!(
                "locks in '{}' are held by other users (uid {})",
                String::from_utf8_lossy(domain),
                others
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for id in ids {
            let l = &self.locks[&id];
            if let Some(to) = l.notify() {
                let event = if l.granted.is_some() {
                    Event::Lost {
                        lock: id,
                        reason: LostReason::DomainLeft,
                    }
                } else {
                    Event::Failed {
                        lock: id,
                        failure: Failure::Cancelled,
                    }
                };
                self.event(Some(to), event);
            }
            self.forget(id);
        }
        for c in self.clients.values_mut() {
            c.domains.remove(domain);
        }
        if self.cluster.is_some() {
            // The node lock records stay until the node has left.
            let dom = self.domains.get_mut(domain).expect("checked");
            dom.pinned = false;
            dom.users.clear();
            for r in dom.resources.values_mut() {
                r.queues = None;
            }
            // Node locks others wait for come down now (the node may stay
            // in the domain if something here uses it again).
            let mut names: Vec<Box<[u8]>> = dom.resources.keys().cloned().collect();
            names.sort();
            for r in names {
                self.grant_pending(domain, &r);
                self.maybe_free(domain, &r);
            }
        } else {
            self.domains.remove(domain);
        }
        Ok(())
    }
}
