//! What a run reads: a listing of objects or of versions, or an S3 Inventory report, each a
//! source of pages in S3's key order.

use crate::disposition::Failure;

use super::inventory::Inventory;
use super::listing::{Objects, Page, Versions};

/// Where the listing comes from.
pub(crate) enum Source {
    Objects(Objects),
    Versions(Versions),
    Inventory(Box<Inventory>),
}

impl Source {
    /// The next page, or `None` once the scope is exhausted.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>, Failure> {
        match self {
            Self::Objects(o) => o.next_page().await,
            Self::Versions(v) => v.next_page().await,
            Self::Inventory(i) => i.next_page().await,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Objects(_) => "objects",
            Self::Versions(_) => "versions",
            Self::Inventory(_) => "inventory",
        }
    }
}
