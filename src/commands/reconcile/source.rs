//! What a run reads, and reading it: the choice ([`Reading`]: an inventory report, or a listing
//! of objects or of versions, `auto` asking the bucket), the source opened at a position of its
//! key order ([`Source`]), and its pages, a transient failure retried ([`next_page`]).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::aws;
use crate::cli::{ListingMode, ReconcileArgs};
use crate::disposition::{Dependency, Failure};

use super::inventory::Inventory;
use super::listing::{self, Objects, Page, Start, Versions};
use super::repair;
use super::stopped::Stopped;

/// What the run reads: a listing (objects or versions) or an inventory report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reading {
    Listing(ListingMode),
    Inventory(String),
}

impl Reading {
    /// The source's name in the report and the checkpoint: a checkpoint is a position in one
    /// source's key order only.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Listing(mode) => mode.as_str().to_owned(),
            Self::Inventory(url) => format!("inventory:{url}"),
        }
    }

    /// What to read: the inventory, or what `--listing` says (for `auto`, the bucket's
    /// versioning: a suspended bucket still holds versions).
    pub(crate) async fn choose(
        s3: &aws_sdk_s3::Client,
        bucket: &str,
        args: &ReconcileArgs,
    ) -> Result<Self, Stopped> {
        if let Some(url) = &args.inventory {
            return Ok(Self::Inventory(url.clone()));
        }
        if args.listing != ListingMode::Auto {
            return Ok(Self::Listing(args.listing));
        }
        let versioned = versioned(s3, bucket).await.map_err(|failure| {
            Stopped::listing(
                "reading the bucket's versioning (or pass --listing objects|versions)",
                &failure,
            )
        })?;
        Ok(Self::Listing(if versioned {
            ListingMode::Versions
        } else {
            ListingMode::Objects
        }))
    }
}

/// Whether the bucket has (or had: suspended) versioning.
async fn versioned(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<bool, Failure> {
    match s3.get_bucket_versioning().bucket(bucket).send().await {
        Ok(versioning) => Ok(versioning.status().is_some()),
        // A 200 the SDK cannot read: some emulators (moto) answer under another root
        // element. The status is read from the document itself.
        Err(error) if aws::status(&error) == Some(200) => {
            let body = error
                .raw_response()
                .and_then(|r| r.body().bytes())
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Ok(says_versioned(&body))
        }
        Err(error) => Err(aws::classify(Dependency::S3, error)),
    }
}

/// Whether a versioning document names a status (a bucket never versioned names none).
fn says_versioned(document: &str) -> bool {
    document.contains("<Status>Enabled</Status>") || document.contains("<Status>Suspended</Status>")
}

/// Where the listing comes from.
pub(crate) enum Source {
    Objects(Objects),
    Versions(Versions),
    Inventory(Box<Inventory>),
}

impl Source {
    /// `reading`, from `start`: an inventory that cannot be read is refused here, by name.
    pub(crate) async fn open(
        s3: aws_sdk_s3::Client,
        reading: &Reading,
        start: Start,
        max_rows_per_key: u64,
    ) -> Result<Self, Stopped> {
        Ok(match reading {
            Reading::Inventory(url) => Self::Inventory(Box::new(
                Inventory::open(s3, url, start, max_rows_per_key)
                    .await
                    .map_err(|f| Stopped::listing("opening the inventory", &f))?,
            )),
            Reading::Listing(ListingMode::Versions) => Self::Versions(Versions::new(s3, start)),
            Reading::Listing(_) => Self::Objects(Objects::new(s3, start)),
        })
    }

    /// The next page, or `None` once the scope is exhausted.
    async fn next_page(&mut self) -> Result<Option<Page>, Failure> {
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

    /// When the listing was taken, for a source older than the run (an inventory report);
    /// `None`: it is read as the run goes.
    pub(crate) fn taken_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Inventory(inventory) => Some(inventory.taken_at),
            Self::Objects(_) | Self::Versions(_) => None,
        }
    }
}

/// The next page, retrying a transient failure.
pub(crate) async fn next_page(
    source: &mut Source,
    shutdown: &CancellationToken,
) -> Result<Option<listing::Page>, Failure> {
    let mut delays = repair::delays();
    loop {
        let page = source.next_page().await;
        if let Err(failure @ Failure::Transient { .. }) = &page {
            tracing::warn!(reason = failure.reason(), error = %failure, "listing failed");
            if repair::pause(&mut delays, shutdown).await {
                continue;
            }
        }
        return page;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_names_the_source_it_is_a_position_in() {
        assert_eq!(Reading::Listing(ListingMode::Versions).name(), "versions");
        assert_eq!(
            Reading::Inventory("s3://r/m.json".into()).name(),
            "inventory:s3://r/m.json"
        );
    }

    #[test]
    fn a_suspended_bucket_still_lists_versions() {
        let document =
            |status: &str| format!("<VersioningConfiguration>{status}</VersioningConfiguration>");
        assert!(says_versioned(&document("<Status>Enabled</Status>")));
        assert!(says_versioned(&document("<Status>Suspended</Status>")));
        assert!(!says_versioned(&document("")));
    }
}
