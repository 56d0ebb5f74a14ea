//! Inodes: the root, domain directories and resource files, their
//! attributes and names, and the requests that only change the namespace
//! (create, remove, list). An inode is dropped once it is unlinked, the
//! kernel forgot it and no lock slot refers to it.
//!
//! May depend on: the core's state and plumbing (`super`) and `dlm` types.
//! Locking is `slots`' business; here only a slot's existence matters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::{
    Answer, Attr, Cont, Core, DirEntry, Kind, MAX_DOMAIN_LEN, MAX_LOCK_NAME_LEN, ROOT_INO, Token,
};
use crate::dlm::{LVB_LEN, Request};

#[derive(Debug)]
pub(super) struct Inode {
    pub(super) kind: Kind,
    pub(super) parent: u64,
    pub(super) name: Vec<u8>,
    pub(super) perm: u16,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) atime: SystemTime,
    pub(super) mtime: SystemTime,
    pub(super) ctime: SystemTime,
    pub(super) children: BTreeMap<Vec<u8>, u64>,
    pub(super) nlookup: u64,
    pub(super) unlinked: bool,
    /// The slot new opens share (default mode).
    pub(super) shared: Option<u64>,
    /// Every slot of this file, lost ones included (unlink is refused
    /// while there is one).
    pub(super) slots: BTreeSet<u64>,
}

pub(super) const S_IFMT: u32 = libc::S_IFMT;
pub(super) const S_IFREG: u32 = libc::S_IFREG;
pub(super) const S_ISGID: u16 = libc::S_ISGID as u16;

impl Core {
    pub(super) fn attr(&self, ino: u64) -> Option<Attr> {
        let i = self.inodes.get(&ino)?;
        let (nlink, size) = match i.kind {
            Kind::Dir => {
                let subdirs = i
                    .children
                    .values()
                    .filter(|c| self.inodes.get(c).is_some_and(|c| c.kind == Kind::Dir))
                    .count();
                let n = if i.unlinked { 0 } else { 2 + subdirs as u32 };
                (n, 0)
            }
            Kind::File => (u32::from(!i.unlinked), LVB_LEN as u64),
        };
        Some(Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink,
            uid: i.uid,
            gid: i.gid,
            size,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    pub(super) fn entry(&mut self, token: Token, ino: u64) {
        match self.attr(ino) {
            Some(a) => {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.nlookup += 1;
                }
                self.reply(token, Answer::Entry(a));
            }
            None => self.err(token, libc::ENOENT),
        }
    }

    pub(super) fn maybe_drop_inode(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(i) = self.inodes.get(&ino) {
            if i.unlinked && i.nlookup == 0 && i.slots.is_empty() {
                self.inodes.remove(&ino);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_inode(
        &mut self,
        parent: u64,
        name: Vec<u8>,
        kind: Kind,
        mut perm: u16,
        uid: u32,
        mut gid: u32,
        now: SystemTime,
    ) -> u64 {
        // Set-group-ID directories hand their group down, as on any Unix
        // file system.
        let p = &self.inodes[&parent];
        if p.perm & S_ISGID != 0 {
            gid = p.gid;
            if kind == Kind::Dir {
                perm |= S_ISGID;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                parent,
                name: name.clone(),
                perm,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                children: BTreeMap::new(),
                nlookup: 0,
                unlinked: false,
                shared: None,
                slots: BTreeSet::new(),
            },
        );
        let p = self.inodes.get_mut(&parent).expect("exists");
        p.children.insert(name, ino);
        p.mtime = now;
        p.ctime = now;
        ino
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mknod(
        &mut self,
        token: Token,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        now: SystemTime,
    ) {
        match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            // Resource files live in domain directories.
            Some(_) if parent == ROOT_INO => return self.err(token, libc::EACCES),
            Some(p) if p.children.contains_key(&name) => return self.err(token, libc::EEXIST),
            Some(_) => {}
        }
        if mode & S_IFMT != S_IFREG {
            return self.err(token, libc::EPERM);
        }
        if name.len() > MAX_LOCK_NAME_LEN {
            return self.err(token, libc::ENAMETOOLONG);
        }
        // `$` names are reserved by the DLM ($RECOVERY).
        if name.first() == Some(&b'$') {
            return self.err(token, libc::EINVAL);
        }
        let ino = self.new_inode(
            parent,
            name,
            Kind::File,
            (mode & 0o7777) as u16,
            uid,
            gid,
            now,
        );
        self.entry(token, ino);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mkdir(
        &mut self,
        token: Token,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        now: SystemTime,
    ) {
        match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            // Domains only at the top level.
            Some(_) if parent != ROOT_INO => return self.err(token, libc::EPERM),
            Some(p) if p.children.contains_key(&name) => return self.err(token, libc::EEXIST),
            Some(_) => {}
        }
        if name.len() > MAX_DOMAIN_LEN {
            return self.err(token, libc::ENAMETOOLONG);
        }
        if !self.connected || self.stopping {
            return self.err(token, libc::EIO);
        }
        self.send(
            Request::Join {
                domain: name.clone(),
                pin: false,
            },
            Cont::Mkdir {
                token,
                name,
                perm: (mode & 0o7777) as u16,
                uid,
                gid,
                now,
            },
        );
    }

    pub(super) fn unlink(&mut self, token: Token, parent: u64, name: &[u8], now: SystemTime) {
        let child = match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            Some(p) => p.children.get(name).copied(),
        };
        let Some(ino) = child else {
            return self.err(token, libc::ENOENT);
        };
        let c = &self.inodes[&ino];
        if c.kind == Kind::Dir {
            return self.err(token, libc::EISDIR);
        }
        // Open, or being opened: the kernel's dlmfs says EBUSY too.
        if !c.slots.is_empty() {
            return self.err(token, libc::EBUSY);
        }
        self.detach(parent, name, ino, now);
        self.reply(token, Answer::Ok);
    }

    pub(super) fn detach(&mut self, parent: u64, name: &[u8], ino: u64, now: SystemTime) {
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.children.remove(name);
            p.mtime = now;
            p.ctime = now;
        }
        if let Some(c) = self.inodes.get_mut(&ino) {
            c.unlinked = true;
            c.ctime = now;
        }
        self.maybe_drop_inode(ino);
    }

    pub(super) fn rmdir(&mut self, token: Token, parent: u64, name: &[u8], now: SystemTime) {
        let child = match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            Some(p) => p.children.get(name).copied(),
        };
        let Some(ino) = child else {
            return self.err(token, libc::ENOENT);
        };
        let c = &self.inodes[&ino];
        if c.kind != Kind::Dir {
            return self.err(token, libc::ENOTDIR);
        }
        if !c.children.is_empty() {
            return self.err(token, libc::ENOTEMPTY);
        }
        self.detach(parent, name, ino, now);
        if self.connected {
            self.send(
                Request::Leave {
                    domain: name.to_vec(),
                    force: false,
                },
                Cont::Rmdir { token },
            );
        } else {
            // lockd forgot us when it went: nothing to leave.
            self.reply(token, Answer::Ok);
        }
    }

    pub(super) fn readdir(&mut self, token: Token, ino: u64, offset: u64) {
        let Some(d) = self.inodes.get(&ino) else {
            return self.err(token, libc::ENOENT);
        };
        if d.kind != Kind::Dir {
            return self.err(token, libc::ENOTDIR);
        }
        let mut all = vec![
            (ino, Kind::Dir, b".".to_vec()),
            (d.parent, Kind::Dir, b"..".to_vec()),
        ];
        for (name, &c) in &d.children {
            let kind = self.inodes.get(&c).map_or(Kind::File, |i| i.kind);
            all.push((c, kind, name.clone()));
        }
        let list = all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(n, (ino, kind, name))| DirEntry {
                ino,
                next: n as u64 + 1,
                kind,
                name,
            })
            .collect();
        self.reply(token, Answer::Dir(list));
    }
}
