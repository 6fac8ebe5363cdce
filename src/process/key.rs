//! Splits an object key into datapack, path and display name, as the Lambda did.
//!
//! `dp-1/raw data/2024/file.csv` → datapack `dp-1`, path `/raw data/2024`, display `file.csv`;
//! `dp-1/file.csv` → path `/`. Keys that cannot name a resource are refused here, so no garbage
//! row is ever written.

use crate::disposition::{DeadLetterReason, Failure, SkipReason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub datapack: String,
    pub path: String,
    pub display: String,
}

/// Why a key names no resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// `dp-1/folder/`: the console's folder placeholder, not a file. Acknowledged and counted.
    Skip(SkipReason),
    /// A key with no datapack segment (`file.csv`, `/file.csv`) or text PostgreSQL cannot store.
    Invalid(String),
}

impl From<KeyRefusal> for Result<crate::disposition::Outcome, Failure> {
    fn from(refusal: KeyRefusal) -> Self {
        match refusal {
            KeyRefusal::Skip(reason) => Ok(crate::disposition::Outcome::Skipped(reason)),
            KeyRefusal::Invalid(detail) => {
                Err(Failure::permanent(DeadLetterReason::InvalidKey, detail))
            }
        }
    }
}

pub fn split(key: &str) -> Result<ResourcePath, KeyRefusal> {
    if key.contains('\0') {
        return Err(KeyRefusal::Invalid(format!(
            "key {key:?} contains a NUL character"
        )));
    }
    if key.ends_with('/') {
        return Err(KeyRefusal::Skip(SkipReason::FolderPlaceholder));
    }
    let Some((datapack, rest)) = key.split_once('/') else {
        return Err(KeyRefusal::Invalid(format!(
            "key {key:?} has no datapack segment (expected <datapack>/<path…>/<file>)"
        )));
    };
    if datapack.is_empty() {
        return Err(KeyRefusal::Invalid(format!(
            "key {key:?} starts with '/': empty datapack"
        )));
    }
    let (dirs, display) = match rest.rsplit_once('/') {
        Some((dirs, display)) => (Some(dirs), display),
        None => (None, rest),
    };
    Ok(ResourcePath {
        datapack: datapack.to_owned(),
        path: format!("/{}", dirs.unwrap_or("")),
        display: display.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str) -> (String, String, String) {
        let p = split(key).unwrap();
        (p.datapack, p.path, p.display)
    }

    #[test]
    fn splits_like_the_lambda() {
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            ok("dp-1/raw data/2024/file.csv"),
            s("dp-1", "/raw data/2024", "file.csv")
        );
        assert_eq!(ok("dp-1/file.csv"), s("dp-1", "/", "file.csv"));
        assert_eq!(ok("dp-1/a/b.txt"), s("dp-1", "/a", "b.txt"));
        assert_eq!(ok("dự án/ảnh/文件.png"), s("dự án", "/ảnh", "文件.png"));
        // Empty middle segments are kept as S3 keeps them: the object key stays the identity.
        assert_eq!(ok("dp//x"), s("dp", "/", "x"));
    }

    #[test]
    fn refuses_keys_without_a_resource() {
        assert_eq!(
            split("dp-1/folder/"),
            Err(KeyRefusal::Skip(SkipReason::FolderPlaceholder))
        );
        assert_eq!(
            split("dp-1/"),
            Err(KeyRefusal::Skip(SkipReason::FolderPlaceholder))
        );
        assert!(matches!(split("file.csv"), Err(KeyRefusal::Invalid(_))));
        assert!(matches!(split("/file.csv"), Err(KeyRefusal::Invalid(_))));
        assert!(matches!(split("dp/a\0b"), Err(KeyRefusal::Invalid(_))));
    }
}
