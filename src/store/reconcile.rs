//! What `reconcile` keeps in and reads from PostgreSQL: the lease and checkpoint of a scope
//! ([`checkpoint`], in `datapack_reconcile`) and the live rows of a key range in S3's key order
//! ([`live`], from `datapack_resource`).

pub(crate) mod checkpoint;
pub(crate) mod live;
