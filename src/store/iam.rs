//! RDS IAM authentication: the token PostgreSQL accepts as the password, signed from the AWS
//! credential chain (a SigV4 query presign of `connect` for service `rds-db`), cached and renewed
//! well before its 15 minutes run out.
//!
//! The signature is written out here rather than borrowed from an SDK: it is a few HMACs over a
//! fixed canonical request, byte for byte what botocore's `generate_db_auth_token` makes (a test
//! compares the two), and it keeps the secret key inside this file.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// RDS accepts a token for 15 minutes after it was signed.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// A token is renewed once this old: five minutes to spare for a slow connect or a skewed clock.
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(600);

/// What a token is for: the endpoint and database user as the URL names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) region: String,
}

/// The signing keys of one credential set.
pub(crate) struct Keys<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) session_token: Option<&'a str>,
}

/// The token for `target`, signed with `keys` at `at`: `HOST:PORT/?Action=connect&DBUser=…`
/// followed by the presign parameters, in botocore's order.
pub(crate) fn token(target: &Target, keys: &Keys<'_>, at: DateTime<Utc>) -> String {
    let stamp = at.format("%Y%m%dT%H%M%SZ").to_string();
    let day = at.format("%Y%m%d").to_string();
    let scope = format!("{day}/{}/rds-db/aws4_request", target.region);
    let host = format!("{}:{}", target.host, target.port);
    let credential = format!("{}/{scope}", keys.access_key_id);
    let expires = TOKEN_LIFETIME.as_secs().to_string();
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", "connect"),
        ("DBUser", &target.user),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", &stamp),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(session) = keys.session_token {
        params.push(("X-Amz-Security-Token", session));
    }
    let encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    let join = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut sorted = encoded.clone();
    sorted.sort();
    let canonical = format!(
        "GET\n/\n{}\nhost:{host}\n\nhost\n{}",
        join(&sorted),
        hex(&Sha256::digest(b""))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", keys.secret_access_key).as_bytes(),
        day.as_bytes(),
    );
    let k_region = hmac(&k_date, target.region.as_bytes());
    let k_service = hmac(&k_region, b"rds-db");
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, to_sign.as_bytes()));
    format!("{host}/?{}&X-Amz-Signature={signature}", join(&encoded))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as SigV4 requires.
fn encode(value: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, KEEP).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Why no token could be made. Never carries a key or a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("DATABASE_IAM_AUTH: no AWS credentials to sign the token with: {0}")]
    Credentials(String),
}

/// Tokens for one target, signed from the credential chain and reused until [`RENEW_AFTER`]
/// (or until shortly before the credentials themselves expire).
pub(crate) struct Tokens {
    target: Target,
    credentials: SharedCredentialsProvider,
    cached: Mutex<Option<(Secret, SystemTime)>>,
}

impl Tokens {
    pub(crate) fn new(target: Target, credentials: SharedCredentialsProvider) -> Self {
        Self {
            target,
            credentials,
            cached: Mutex::new(None),
        }
    }

    /// A token good for at least five more minutes.
    pub(crate) async fn current(&self) -> Result<Secret, TokenError> {
        let now = SystemTime::now();
        if let Some((token, until)) = self.lock().as_ref()
            && now < *until
        {
            return Ok(token.clone());
        }
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| TokenError::Credentials(crate::disposition::chain(&e)))?;
        let keys = Keys {
            access_key_id: credentials.access_key_id(),
            secret_access_key: credentials.secret_access_key(),
            session_token: credentials.session_token(),
        };
        let token = Secret(self::token(&self.target, &keys, now.into()));
        let mut until = now + RENEW_AFTER;
        if let Some(expiry) = credentials.expiry() {
            // Signed with keys that end sooner: renew a minute before they do.
            until = until.min(expiry.checked_sub(Duration::from_secs(60)).unwrap_or(now));
        }
        *self.lock() = Some((token.clone(), until));
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Secret, SystemTime)>> {
        self.cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex(&hmac(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// The Python that has botocore: the tools' virtualenv (scripts/ensure-moto.sh makes it, with
    /// boto3 and so botocore), else the one on PATH.
    fn python() -> String {
        let venv = std::env::var("DATAPACK_TOOLS_VENV").unwrap_or_else(|_| {
            format!(
                "{}/.cache/datapack-worker/venv",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let candidate = format!("{venv}/bin/python3");
        if std::path::Path::new(&candidate).exists() {
            candidate
        } else {
            "python3".into()
        }
    }

    /// botocore's `generate_db_auth_token` for the same inputs, its clock frozen at `at`.
    fn botocore_token(target: &Target, keys: &Keys<'_>, at: &str) -> String {
        const SCRIPT: &str = r#"
import datetime, sys
from unittest import mock
import botocore.auth, botocore.session
host, port, user, region, key, secret, token, at = sys.argv[1:9]
session = botocore.session.get_session()
session.set_credentials(key, secret, token or None)
client = session.create_client("rds", region_name=region)
fixed = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S")
if hasattr(botocore.auth, "get_current_datetime"):
    patched = mock.patch("botocore.auth.get_current_datetime", return_value=fixed)
else:
    patched = mock.patch("botocore.auth.datetime")
with patched as clock:
    if not hasattr(botocore.auth, "get_current_datetime"):
        clock.datetime.utcnow.return_value = fixed
    print(client.generate_db_auth_token(host, int(port), user, Region=region), end="")
"#;
        let out = std::process::Command::new(python())
            .args(["-c", SCRIPT])
            .args([
                target.host.as_str(),
                &target.port.to_string(),
                &target.user,
                &target.region,
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token.unwrap_or(""),
                at,
            ])
            .output()
            .expect("python3 (scripts/ensure-moto.sh installs botocore)");
        assert!(
            out.status.success(),
            "botocore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The token is botocore's, byte for byte, for fixed credentials and a fixed time: with and
    /// without a session token, with characters that need encoding in the user and the keys.
    #[test]
    fn the_token_is_botocores() {
        let at = "2024-05-06T07:08:09";
        let time = DateTime::parse_from_rfc3339("2024-05-06T07:08:09Z")
            .unwrap()
            .with_timezone(&Utc);
        let target = Target {
            host: "mydb.c9akciq32.eu-west-1.rds.amazonaws.com".into(),
            port: 5432,
            user: "datapack_worker".into(),
            region: "eu-west-1".into(),
        };
        let session = Keys {
            access_key_id: "ASIAEXAMPLEKEYID1234",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: Some("IQoJb3JpZ2luX2VjE/+session=token"),
        };
        let ours = token(&target, &session, time);
        assert_eq!(ours, botocore_token(&target, &session, at));
        assert!(ours.starts_with(
            "mydb.c9akciq32.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=datapack_worker&"
        ));
        let odd = Target {
            host: "localhost".into(),
            port: 6543,
            user: "app user+1@x".into(),
            region: "us-east-1".into(),
        };
        let plain = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "secret",
            session_token: None,
        };
        assert_eq!(token(&odd, &plain, time), botocore_token(&odd, &plain, at));
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(encode("a/b+c=d~e_f.g-h"), "a%2Fb%2Bc%3Dd~e_f.g-h");
    }
}
