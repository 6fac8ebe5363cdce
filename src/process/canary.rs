//! The S3 probe, and in it the breaker's deep probe: reads of objects that were readable a
//! moment ago.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::aws;
use crate::disposition::{Dependency, Failure, ObjectName, RetryReason};
use crate::ops::health::{Health, Probe, probe};
use crate::process::fetch::Target;

/// The S3 probe: every served bucket answers HeadBucket, and while the S3 breaker is tripped
/// (most reads fail), the canary reads an object that was readable, which tells a brownout (a
/// policy or KMS grant refusing every GetObject while the bucket answers) from a run of bad
/// objects.
pub(crate) fn s3_probe(
    s3: aws_sdk_s3::Client,
    buckets: Vec<String>,
    health: Health,
    canary: Arc<Canary>,
) -> Probe {
    let buckets = Arc::new(buckets);
    probe(move || {
        let (s3, buckets, health, canary) =
            (s3.clone(), buckets.clone(), health.clone(), canary.clone());
        async move {
            for bucket in buckets.iter() {
                s3.head_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map_err(|e| aws::classify(Dependency::S3, e))?;
            }
            if health.tripped(Dependency::S3) {
                canary.probe(&s3).await?;
            }
            Ok(())
        }
    })
}

/// One object the S3 probe may read in depth: the name a failure would carry, and the version
/// that was read (a versioned bucket's later upload may not be readable yet).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectRef {
    name: ObjectName,
    version_id: Option<String>,
}

impl ObjectRef {
    fn of(target: &Target<'_>) -> Self {
        Self {
            name: ObjectName {
                bucket: target.bucket.to_owned(),
                key: target.key.to_owned(),
            },
            version_id: target.version_id.map(str::to_owned),
        }
    }

    /// Becomes `target`, reusing its strings (this runs for every object read).
    fn set(&mut self, target: &Target<'_>) {
        overwrite(&mut self.name.bucket, target.bucket);
        overwrite(&mut self.name.key, target.key);
        match (&mut self.version_id, target.version_id) {
            (Some(kept), Some(version)) => overwrite(kept, version),
            (kept, version) => *kept = version.map(str::to_owned),
        }
    }
}

fn overwrite(kept: &mut String, with: &str) {
    kept.clear();
    kept.push_str(with);
}

/// Objects to read when the S3 breaker trips: the last object read whole, and a few that failed
/// since. HeadBucket alone cannot see a brownout (a bucket policy or a KMS grant that refuses
/// every GetObject while the bucket answers), but a real read of an object that was readable a
/// moment ago can: if it fails too, the fault is S3's or ours, not the objects'.
#[derive(Debug, Default)]
pub struct Canary {
    state: std::sync::Mutex<CanaryState>,
}

#[derive(Debug, Default)]
struct CanaryState {
    last_ok: Option<ObjectRef>,
    failed: VecDeque<ObjectRef>,
}

/// Failed objects kept for the probe: enough that one object that stays unreadable on its own
/// cannot keep the worker paused.
const CANARY_FAILED_KEPT: usize = 5;

impl Canary {
    fn state(&self) -> std::sync::MutexGuard<'_, CanaryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called for every object read: the last one's strings are overwritten in place, so this
    /// allocates only when a name outgrows them.
    pub(crate) fn read_ok(&self, target: &Target<'_>) {
        let mut state = self.state();
        match &mut state.last_ok {
            Some(last) => last.set(target),
            None => state.last_ok = Some(ObjectRef::of(target)),
        }
    }

    pub(crate) fn read_failed(&self, target: &Target<'_>) {
        let object = ObjectRef::of(target);
        let mut state = self.state();
        state.failed.retain(|o| *o != object);
        state.failed.push_front(object);
        state.failed.truncate(CANARY_FAILED_KEPT);
    }

    /// Reads the first byte of the canary objects until one answers: any answer that shows S3
    /// authorised the read (the byte, 404, 412, 416) means reads work. With nothing to read yet,
    /// there is nothing to disprove.
    pub(crate) async fn probe(&self, s3: &aws_sdk_s3::Client) -> Result<(), Failure> {
        let candidates: Vec<ObjectRef> = {
            let state = self.state();
            state
                .last_ok
                .iter()
                .chain(state.failed.iter())
                .cloned()
                .collect()
        };
        let mut last = None;
        for object in candidates {
            let mut request = s3
                .get_object()
                .bucket(&object.name.bucket)
                .key(&object.name.key)
                .range("bytes=0-0");
            if let Some(version) = &object.version_id {
                request = request.version_id(version);
            }
            let answer = match request.send().await {
                Ok(output) => output
                    .body
                    .collect()
                    .await
                    .map(drop)
                    .map_err(|e| Failure::transient(RetryReason::S3ReadFailed, e)),
                Err(error) => match aws::status(&error) {
                    Some(404 | 412 | 416) => Ok(()),
                    _ => Err(aws::classify(Dependency::S3, error)),
                },
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(failure) => last = Some(failure),
            }
        }
        last.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(key: &'a str, version_id: Option<&'a str>) -> Target<'a> {
        Target {
            bucket: "uploads",
            key,
            etag: None,
            version_id,
            size: None,
        }
    }

    #[test]
    fn the_last_object_read_is_the_one_kept() {
        let canary = Canary::default();
        for t in [
            target("dp/a-longer-key.bin", Some("v1")),
            target("dp/b", None),
            target("dp/c", Some("v3")),
            target("dp/d", Some("v4")),
        ] {
            canary.read_ok(&t);
            assert_eq!(canary.state().last_ok, Some(ObjectRef::of(&t)));
        }
    }
}
