//! What a reconcile covers: one bucket (the one `run` serves, unless `--bucket` says) and the
//! keys under one prefix (`--prefix`, or `--datapack`'s), checked before anything is built.

use crate::cli::ReconcileArgs;
use crate::config::{self, ConfigError};

/// The bucket and the key prefix a run compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) bucket: String,
    pub(crate) prefix: String,
}

impl Scope {
    /// The scope the flags name, with reconcile's own flags checked against their ranges.
    pub(crate) fn of(args: &ReconcileArgs) -> Result<Self, ConfigError> {
        config::check_range("RECONCILE_CONCURRENCY", args.concurrency as u64)?;
        config::check_range("--page-keys", u64::try_from(args.page_keys).unwrap_or(0))?;
        config::check_range(
            "--inventory-max-rows-per-key",
            args.inventory_max_rows_per_key,
        )?;
        // The buckets as `run` reads them: `S3_BUCKET`, else the seed's `FILESYSTEM_S3_BUCKET`.
        Ok(Self {
            bucket: bucket(args.bucket.as_deref(), &args.run.buckets())?,
            prefix: prefix(&args.prefix, args.datapack.as_deref())?,
        })
    }
}

fn invalid(name: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.into(),
    }
}

/// `--bucket`, else the one bucket `run` would serve.
fn bucket(flag: Option<&str>, served: &[String]) -> Result<String, ConfigError> {
    match (flag, served) {
        (Some(bucket), _) => Ok(bucket.to_owned()),
        (None, [one]) => Ok(one.clone()),
        (None, []) => Err(ConfigError::Missing(
            "--bucket (or S3_BUCKET, or FILESYSTEM_S3_BUCKET)",
        )),
        (None, _) => Err(invalid(
            "--bucket",
            "S3_BUCKET names several buckets: say which to reconcile",
        )),
    }
}

/// `--datapack`'s keys (`DATAPACK/`), else `--prefix`.
fn prefix(prefix: &str, datapack: Option<&str>) -> Result<String, ConfigError> {
    match datapack {
        Some(datapack) if datapack.is_empty() || datapack.contains('/') => {
            Err(invalid("--datapack", "must be one datapack identifier"))
        }
        Some(datapack) => Ok(format!("{datapack}/")),
        None => Ok(prefix.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(buckets: &[&str]) -> Vec<String> {
        buckets.iter().map(|b| (*b).to_owned()).collect()
    }

    #[test]
    fn the_bucket_is_the_flag_or_the_one_run_serves() {
        assert_eq!(bucket(Some("b"), &served(&["a", "c"])).unwrap(), "b");
        assert_eq!(bucket(None, &served(&["a"])).unwrap(), "a");
        assert!(matches!(
            bucket(None, &[]),
            Err(ConfigError::Missing(name)) if name.starts_with("--bucket")
        ));
        assert!(matches!(
            bucket(None, &served(&["a", "c"])),
            Err(ConfigError::Invalid {
                name: "--bucket",
                ..
            })
        ));
    }

    #[test]
    fn a_datapack_is_its_keys_prefix() {
        assert_eq!(prefix("", Some("dp1")).unwrap(), "dp1/");
        assert_eq!(prefix("dp1/raw", None).unwrap(), "dp1/raw");
        for bad in ["", "dp1/raw"] {
            assert!(matches!(
                prefix("", Some(bad)),
                Err(ConfigError::Invalid {
                    name: "--datapack",
                    ..
                })
            ));
        }
    }
}
