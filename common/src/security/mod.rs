//! Transport security and access control for every listener: the coordinator's gRPC
//! control API and each worker's Flight SQL service.
//!
//! * [`tls`]: certificates from files. With `security.tls_cert`/`tls_key` set, both
//!   listeners speak TLS only; with `security.tls_ca` set too, the coordinator requires a
//!   client certificate signed by that CA (mTLS between coordinator, workers and the CLI),
//!   and Flight SQL does when `flight_client_certs` says so. etcd is dialled over TLS with
//!   a client certificate from `etcd_ca`/`etcd_cert`/`etcd_key`.
//! * [`auth`]: who is calling. With `tokens_file` or `jwt_key_file` set, every call must
//!   carry a bearer token (gRPC metadata `authorization: Bearer …`, or Basic credentials in
//!   a Flight SQL handshake that answers with the bearer). The token names a [`Role`] and
//!   the tables its holder may read; unauthenticated calls get `UNAUTHENTICATED`, calls
//!   beyond the role or the grants `PERMISSION_DENIED`.
//!
//! Invariants: a service is only ever mounted behind [`auth::Authenticator::interceptor`],
//! and a handler that finds no [`Principal`] on its request refuses it (fail closed).
//! Secrets (tokens, keys) are held in [`Secret`], whose `Debug`, `Display` and `Serialize`
//! print `<redacted>`, and no error message quotes a presented credential.

pub mod auth;
mod config;
mod secret;
pub mod tls;
mod tokens;

pub use auth::{Authenticator, Grants, Principal, Role};
pub use config::SecurityConfig;
pub use secret::Secret;
