//! dlmfs: the lock manager as a FUSE file system (being written).
