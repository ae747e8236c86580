//! Who is calling, and what they may do.
//!
//! Every service is mounted behind [`Authenticator::interceptor`], which checks the
//! request's `authorization` metadata and puts the caller's [`Principal`] on the request;
//! handlers read it with [`principal`] and check [`Principal::require`] (control calls)
//! or [`Principal::may_read`] (each table a query names). Without tokens configured the
//! interceptor admits everyone as [`Principal::unrestricted`].

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::SecurityConfig;
use super::tokens::{self, Jwt};
use crate::Result;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries (Flight SQL) and `smelter status`.
    Reader,
    /// Also changes pipelines and tables: apply, restore, delete, compact.
    Operator,
    /// Everything, including the workers' own calls to the coordinator.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// Tables a caller may read: name patterns where `*` matches any run of characters
/// (`gold.*` is the gold layer, `silver.events` one table). `None`: every table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Option<Vec<String>>);

impl Grants {
    /// Every table.
    pub fn all() -> Self {
        Self(None)
    }

    /// The tables matching one of `patterns`.
    pub fn only(patterns: Vec<String>) -> Self {
        Self(Some(patterns))
    }

    /// Whether `table` (`layer.name`) is granted.
    pub fn allows(&self, table: &str) -> bool {
        match &self.0 {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob(p, table)),
        }
    }
}

/// `*`-only glob match over the whole of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's holder (its `name`, or the JWT's `sub`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The tables it may read.
    pub grants: Grants,
}

impl Principal {
    /// Everyone, when no tokens are configured.
    pub fn unrestricted() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
            grants: Grants::all(),
        }
    }

    /// `PERMISSION_DENIED` unless this caller has at least `role`; `action` names what
    /// was attempted.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Status> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {role} role; {} is a {}",
                self.name, self.role
            )))
        }
    }

    /// Whether this caller may read `table`.
    pub fn may_read(&self, table: &str) -> bool {
        self.grants.allows(table)
    }
}

/// The caller of `request`, as the interceptor found it. A request that did not pass
/// through the interceptor is refused.
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// Checks bearer tokens (static ones and JWTs) against the configuration.
#[derive(Debug)]
pub struct Authenticator {
    /// `None`: no tokens configured; everyone is admitted.
    checks: Option<Checks>,
}

#[derive(Debug)]
struct Checks {
    /// Static tokens by their SHA-256 digest.
    tokens: HashMap<[u8; 32], Principal>,
    jwt: Option<Jwt>,
}

impl Authenticator {
    /// From `security`: its tokens file and JWT key, read now (a bad file fails here, at
    /// start-up, naming the file and the entry).
    pub fn from_config(security: &SecurityConfig) -> Result<Arc<Self>> {
        if !security.requires_tokens() {
            return Ok(Arc::new(Self { checks: None }));
        }
        let tokens = match &security.tokens_file {
            Some(path) => tokens::load_file(path, |name| std::env::var(name).ok())?,
            None => HashMap::new(),
        };
        let jwt = match &security.jwt_key_file {
            Some(path) => Some(Jwt::from_config(path, security)?),
            None => None,
        };
        Ok(Arc::new(Self {
            checks: Some(Checks { tokens, jwt }),
        }))
    }

    /// An authenticator that admits everyone (no tokens configured).
    pub fn open() -> Arc<Self> {
        Arc::new(Self { checks: None })
    }

    /// Whether calls need tokens.
    pub fn requires_tokens(&self) -> bool {
        self.checks.is_some()
    }

    /// The caller presenting `metadata`'s `authorization`: `Bearer <token>`, or `Basic`
    /// credentials whose password is the token (the Flight SQL handshake). Errors are
    /// `UNAUTHENTICATED` and never quote what was presented.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let Some(checks) = &self.checks else {
            return Ok(Principal::unrestricted());
        };
        let header = metadata
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing credentials: send `authorization: Bearer <token>`")
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("unreadable authorization header"))?;
        let (user, token) = parse_authorization(header)?;
        let principal = checks.check(&token)?;
        if let Some(user) = user.filter(|u| !u.is_empty())
            && user != principal.name
        {
            return Err(Status::unauthenticated("user and token do not match"));
        }
        Ok(principal)
    }

    /// The interceptor to mount every service behind.
    pub fn interceptor(self: &Arc<Self>) -> AuthInterceptor {
        AuthInterceptor(self.clone())
    }
}

impl Checks {
    fn check(&self, token: &str) -> Result<Principal, Status> {
        if let Some(principal) = self.tokens.get(&tokens::digest(token)) {
            return Ok(principal.clone());
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => jwt.check(token),
            _ => Err(Status::unauthenticated("invalid token")),
        }
    }
}

/// `(user, token)` from an authorization header.
fn parse_authorization(header: &str) -> Result<(Option<String>, String), Status> {
    let (scheme, value) = header
        .split_once(' ')
        .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok((None, value.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padded or not: Arrow's Go Flight client (ADBC) sends it without padding.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| Status::unauthenticated("unreadable Basic credentials"))?;
        let (user, password) = decoded.split_once(':').unwrap_or(("", decoded.as_str()));
        return Ok((Some(user.to_string()), password.to_string()));
    }
    Err(Status::unauthenticated(
        "authorization must be `Bearer <token>` or Basic credentials",
    ))
}

/// The token `metadata` presents (bearer, or the password of Basic credentials), to hand
/// back from a Flight SQL handshake. `None` when there is none.
pub fn presented_token(metadata: &MetadataMap) -> Option<super::Secret> {
    let header = metadata.get("authorization")?.to_str().ok()?;
    parse_authorization(header)
        .ok()
        .map(|(_, token)| super::Secret::new(token))
}

/// Adds this process's bearer token (`security.token`) to every call a client makes.
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// The token of `security`, if one is configured.
    pub fn from_config(security: &SecurityConfig) -> Result<Self> {
        security
            .token
            .as_ref()
            .map(|token| Self::token(token.expose()))
            .transpose()
            .map(|value| Self(value.and_then(|b| b.0)))
    }

    /// Presents `token`.
    pub fn token(token: &str) -> Result<Self> {
        let mut value = format!("Bearer {token}")
            .parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|_| crate::Error::Config {
                source_name: "security.token".into(),
                message: "a token must be printable ASCII".into(),
            })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Authenticates each request and puts its [`Principal`] on it.
#[derive(Debug, Clone)]
pub struct AuthInterceptor(Arc<Authenticator>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.0.authenticate(request.metadata())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("gold.*", "gold.hourly"));
        assert!(!glob("gold.*", "silver.events"));
        assert!(glob("*", "bronze.events"));
        assert!(glob("silver.events", "silver.events"));
        assert!(!glob("silver.events", "silver.events_quarantine"));
        assert!(glob("*.events*", "silver.events_quarantine"));
        assert!(!glob("*.events", "silver.events_quarantine"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
    }

    #[test]
    fn roles_are_ordered() {
        let reader = Principal {
            name: "ana".into(),
            role: Role::Reader,
            grants: Grants::only(vec!["gold.*".into()]),
        };
        assert!(reader.require(Role::Reader, "query").is_ok());
        let denied = reader.require(Role::Operator, "apply").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("operator"),
            "{}",
            denied.message()
        );
        assert!(reader.may_read("gold.daily"));
        assert!(!reader.may_read("silver.events"));
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_authorization("Bearer abc").unwrap(),
            (None, "abc".to_string())
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("ana:tok");
        assert_eq!(
            parse_authorization(&format!("Basic {basic}")).unwrap(),
            (Some("ana".into()), "tok".to_string())
        );
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("ana:token");
        assert_eq!(
            parse_authorization(&format!("Basic {unpadded}")).unwrap(),
            (Some("ana".into()), "token".to_string())
        );
        assert_eq!(
            parse_authorization("Token abc").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
