//! Where tokens come from: a YAML file of static tokens, and JWTs signed by a configured
//! key.
//!
//! ```yaml
//! tokens:
//!   - name: pipeline-workers
//!     token_env: SMELTER_WORKER_TOKEN   # or `token: ...`, or `token_sha256: <hex>`
//!     role: admin
//!   - name: analysts
//!     token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     role: reader
//!     tables: ["gold.*", "silver.events"]
//! ```
//!
//! A JWT carries the same in its claims: `sub` (the name), `role`, optional `tables`,
//! and `exp` (required).

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tonic::Status;

use super::SecurityConfig;
use super::auth::{Grants, Principal, Role};
use crate::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    #[serde(default)]
    tables: Option<Vec<String>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_sha256: Option<String>,
}

/// SHA-256 of a token: static tokens are looked up by digest.
pub(super) fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The static tokens of `path`; `env` resolves `token_env` names.
pub(super) fn load_file(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<[u8; 32], Principal>> {
    let source_name = path.display().to_string();
    let bad = |message: String| Error::Config {
        source_name: source_name.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: TokensFile =
        serde_yaml::from_str(&text).map_err(|e| bad(format!("not a tokens file: {e}")))?;
    let mut tokens = HashMap::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = format!("tokens[{i}] ({})", entry.name);
        let digest = match (&entry.token, &entry.token_env, &entry.token_sha256) {
            (Some(token), None, None) if !token.is_empty() => digest(token),
            (None, Some(var), None) => match env(var) {
                Some(token) if !token.is_empty() => digest(&token),
                _ => return Err(bad(format!("{at}: environment variable {var} is not set"))),
            },
            (None, None, Some(hex)) => hex32(&hex.to_ascii_lowercase())
                .ok_or_else(|| bad(format!("{at}: token_sha256 must be 64 hex digits")))?,
            _ => {
                return Err(bad(format!(
                    "{at}: give exactly one of token, token_env, token_sha256"
                )));
            }
        };
        let principal = Principal {
            name: entry.name,
            role: entry.role,
            grants: entry.tables.map_or_else(Grants::all, Grants::only),
        };
        if tokens.insert(digest, principal).is_some() {
            return Err(bad(format!("{at}: the same token is given twice")));
        }
    }
    Ok(tokens)
}

/// JWT validation with one key.
pub(super) struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    #[serde(default)]
    tables: Option<Vec<String>>,
}

impl Jwt {
    pub(super) fn from_config(path: &Path, security: &SecurityConfig) -> Result<Self> {
        let bad = |message: String| Error::Config {
            source_name: "security.jwt_key_file".into(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let algorithm = match security.jwt_algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(bad(format!(
                    "jwt_algorithm {other} is not one of HS256, RS256, ES256"
                )));
            }
        };
        let key = match algorithm {
            Algorithm::HS256 => {
                let secret = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if secret.len() < 32 {
                    return Err(bad("an HS256 secret needs at least 32 bytes".into()));
                }
                DecodingKey::from_secret(&secret)
            }
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&bytes)
                .map_err(|e| bad(format!("not an RSA public key (PEM): {e}")))?,
            _ => DecodingKey::from_ec_pem(&bytes)
                .map_err(|e| bad(format!("not an EC public key (PEM): {e}")))?,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        if let Some(issuer) = &security.jwt_issuer {
            validation.set_issuer(&[issuer]);
        }
        match &security.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    pub(super) fn check(&self, token: &str) -> Result<Principal, Status> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                Status::unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired token".to_string(),
                    ErrorKind::InvalidSignature => "invalid token signature".to_string(),
                    ErrorKind::InvalidIssuer => "token from another issuer".to_string(),
                    ErrorKind::InvalidAudience => "token for another audience".to_string(),
                    ErrorKind::MissingRequiredClaim(claim) => format!("token lacks `{claim}`"),
                    ErrorKind::Json(_) => "token claims need `sub` and `role`".to_string(),
                    _ => "invalid token".to_string(),
                })
            })?;
        Ok(Principal {
            name: data.claims.sub,
            role: data.claims.role,
            grants: data.claims.tables.map_or_else(Grants::all, Grants::only),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn static_tokens_from_values_env_and_digests() {
        let tokens = file(&format!(
            "tokens:\n\
             - {{ name: ops, token: op-token, role: operator }}\n\
             - {{ name: workers, token_env: WORKER_TOKEN, role: admin }}\n\
             - {{ name: ana, token_sha256: {}, role: reader, tables: [\"gold.*\"] }}\n",
            digest("ana-token")
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        ));
        let loaded = load_file(tokens.path(), |var| {
            (var == "WORKER_TOKEN").then(|| "w-token".to_string())
        })
        .unwrap();
        assert_eq!(loaded[&digest("op-token")].role, Role::Operator);
        assert_eq!(loaded[&digest("w-token")].name, "workers");
        let ana = &loaded[&digest("ana-token")];
        assert!(ana.may_read("gold.x") && !ana.may_read("silver.x"));
    }

    #[test]
    fn bad_files_name_the_entry() {
        for (text, expected) in [
            (
                "tokens:\n- { name: a, role: reader }\n",
                "tokens[0] (a): give exactly one",
            ),
            (
                "tokens:\n- { name: a, token_env: NOPE, role: reader }\n",
                "NOPE is not set",
            ),
            (
                "tokens:\n- { name: a, token: x, role: root }\n",
                "unknown variant `root`",
            ),
            (
                "tokens:\n- { name: a, token: x, role: reader }\n- { name: b, token: x, role: admin }\n",
                "tokens[1] (b): the same token",
            ),
        ] {
            let error = load_file(file(text).path(), |_| None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("token: x"), "{error}");
        }
    }

    #[test]
    fn jwts_are_checked_for_signature_expiry_and_claims() {
        let secret = "0123456789abcdef0123456789abcdef";
        let key = file(secret);
        let security = SecurityConfig {
            jwt_key_file: Some(key.path().to_path_buf()),
            jwt_issuer: Some("smelter-test".into()),
            ..SecurityConfig::default()
        };
        let jwt = Jwt::from_config(key.path(), &security).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let sign = |claims: serde_json::Value, secret: &str| {
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let good = sign(
            serde_json::json!({"sub": "ana", "role": "reader", "tables": ["gold.*"], "exp": now + 600, "iss": "smelter-test"}),
            secret,
        );
        let ana = jwt.check(&good).unwrap();
        assert_eq!((ana.name.as_str(), ana.role), ("ana", Role::Reader));
        assert!(!ana.may_read("silver.events"));
        for (claims, key, expected) in [
            (
                serde_json::json!({"sub": "a", "role": "reader", "exp": now - 600, "iss": "smelter-test"}),
                secret,
                "expired",
            ),
            (
                serde_json::json!({"sub": "a", "role": "reader", "exp": now + 600, "iss": "smelter-test"}),
                "another-secret-another-secret-xx",
                "signature",
            ),
            (
                serde_json::json!({"sub": "a", "role": "reader", "exp": now + 600, "iss": "elsewhere"}),
                secret,
                "issuer",
            ),
            (
                serde_json::json!({"sub": "a", "exp": now + 600, "iss": "smelter-test"}),
                secret,
                "`role`",
            ),
            (
                serde_json::json!({"sub": "a", "role": "reader", "iss": "smelter-test"}),
                secret,
                "`exp`",
            ),
        ] {
            let status = jwt.check(&sign(claims, key)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(expected), "{}", status.message());
        }
    }
}
