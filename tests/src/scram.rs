//! A SASL/SCRAM gate in front of a broker that keeps no SCRAM users (tansu 0.6: storing a
//! user is a no-op in its memory and S3 storage, docs/security.md): the server side of
//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) over Kafka's `SaslHandshake` and
//! `SaslAuthenticate` requests, written from the RFCs and Kafka's protocol guide, sharing
//! nothing with the clients under test. A connection's `ApiVersions` requests go to the
//! broker; its first other request must be the handshake, and once it has authenticated,
//! its bytes go to the broker and back as they are. Anything else closes the connection,
//! as a broker does with an unauthenticated client.
//!
//! Clients (librdkafka in the workers, the test's producer) do real SCRAM against it: a
//! wrong password is refused with `SASL_AUTHENTICATION_FAILED`, and the gate counts the
//! exchanges that succeeded and failed, so a test can assert that authentication happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Kafka API keys the gate answers itself or lets through unauthenticated.
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const API_VERSIONS: i16 = 18;
/// Kafka error codes.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// PBKDF2 rounds of the stored credential (Kafka's default for SCRAM users).
const ITERATIONS: u32 = 4096;

/// What the gate has seen.
#[derive(Debug, Default)]
pub struct Exchanges {
    /// SCRAM exchanges that authenticated.
    pub succeeded: AtomicUsize,
    /// SCRAM exchanges refused (a wrong password or user, a bad proof).
    pub failed: AtomicUsize,
}

/// The gate: listening on `port`, authenticating `user` with `password`, passing
/// authenticated connections to the broker on `upstream`. Stops when dropped.
pub struct ScramGate {
    /// The port clients connect to.
    pub port: u16,
    /// The exchanges it has seen.
    pub exchanges: Arc<Exchanges>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScramGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The one user the gate knows.
#[derive(Clone)]
struct User {
    name: String,
    password: String,
}

impl ScramGate {
    /// Listens on a loopback port for clients of the broker on `upstream`.
    pub async fn start(upstream: u16, user: &str, password: &str) -> ScramGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a gate port");
        let port = listener.local_addr().expect("its address").port();
        let exchanges = Arc::new(Exchanges::default());
        let user = User {
            name: user.to_string(),
            password: password.to_string(),
        };
        let counted = exchanges.clone();
        // Each connection is served by a task of its own, which ends with its connection;
        // all of them are aborted with the accepting task when the gate is dropped.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (user, counted) = (user.clone(), counted.clone());
                connections.spawn(async move {
                    let _ = serve(client, upstream, &user, &counted).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        ScramGate {
            port,
            exchanges,
            task,
        }
    }
}

/// One client connection: `ApiVersions` through, the SASL exchange answered, then piped.
async fn serve(
    mut client: TcpStream,
    upstream: u16,
    user: &User,
    exchanges: &Exchanges,
) -> std::io::Result<()> {
    let mut broker = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let mut hash = None;
    let mut exchange: Option<Exchange> = None;
    loop {
        let request = read_frame(&mut client).await?;
        let header = Header::parse(&request).ok_or_else(bad_request)?;
        match header.api_key {
            API_VERSIONS => {
                write_frame(&mut broker, &request).await?;
                let answer = read_frame(&mut broker).await?;
                write_frame(&mut client, &answer).await?;
            }
            SASL_HANDSHAKE => {
                let mechanism = read_string(&request[header.body..]).ok_or_else(bad_request)?;
                hash = Hash::named(&mechanism);
                let mut body = Vec::new();
                let code = if hash.is_some() {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                body.extend_from_slice(&code.to_be_bytes());
                body.extend_from_slice(&2i32.to_be_bytes());
                for name in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                    put_string(&mut body, name);
                }
                write_frame(&mut client, &response(header.correlation, &body)).await?;
                if hash.is_none() {
                    return Ok(());
                }
            }
            SASL_AUTHENTICATE if header.api_version <= 1 => {
                let Some(hash) = hash else {
                    return Err(bad_request());
                };
                let message = read_bytes(&request[header.body..]).ok_or_else(bad_request)?;
                let message = String::from_utf8_lossy(message).into_owned();
                let step = match exchange.take() {
                    None => Exchange::first(hash, user, &message).map(|(next, reply)| {
                        exchange = Some(next);
                        (reply, false)
                    }),
                    Some(first) => first.last(user, &message).map(|reply| (reply, true)),
                };
                let mut body = Vec::new();
                match &step {
                    Some((reply, _)) => {
                        body.extend_from_slice(&0i16.to_be_bytes());
                        body.extend_from_slice(&(-1i16).to_be_bytes());
                        put_bytes(&mut body, reply.as_bytes());
                    }
                    None => {
                        exchanges.failed.fetch_add(1, Ordering::SeqCst);
                        body.extend_from_slice(&SASL_AUTHENTICATION_FAILED.to_be_bytes());
                        put_string(
                            &mut body,
                            &format!(
                                "Authentication failed during authentication due to invalid \
                                 credentials with SASL mechanism {}",
                                hash.name()
                            ),
                        );
                        put_bytes(&mut body, b"");
                    }
                }
                if header.api_version >= 1 {
                    body.extend_from_slice(&0i64.to_be_bytes());
                }
                write_frame(&mut client, &response(header.correlation, &body)).await?;
                match step {
                    Some((_, true)) => {
                        exchanges.succeeded.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Some((_, false)) => {}
                    None => return Ok(()),
                }
            }
            // Anything else before authenticating: closed, as a broker does.
            _ => return Ok(()),
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut broker).await?;
    Ok(())
}

fn bad_request() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "not a Kafka SASL request")
}

/// A request header (v1: key, version, correlation id, client id).
struct Header {
    api_key: i16,
    api_version: i16,
    correlation: i32,
    /// Where the request body starts.
    body: usize,
}

impl Header {
    fn parse(frame: &[u8]) -> Option<Header> {
        let api_key = i16::from_be_bytes(frame.get(0..2)?.try_into().ok()?);
        let api_version = i16::from_be_bytes(frame.get(2..4)?.try_into().ok()?);
        let correlation = i32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
        let client_id = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
        Some(Header {
            api_key,
            api_version,
            correlation,
            body: 10 + client_id.max(0) as usize,
        })
    }
}

/// A response frame (header v0: the correlation id) with `body`.
fn response(correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut out = correlation.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let size = stream.read_i32().await?;
    let mut frame = vec![0; usize::try_from(size).map_err(|_| bad_request())?];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    stream.write_i32(frame.len() as i32).await?;
    stream.write_all(frame).await
}

fn read_string(at: &[u8]) -> Option<String> {
    let len = i16::from_be_bytes(at.get(0..2)?.try_into().ok()?);
    let text = at.get(2..2 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

fn read_bytes(at: &[u8]) -> Option<&[u8]> {
    let len = i32::from_be_bytes(at.get(0..4)?.try_into().ok()?);
    at.get(4..4 + usize::try_from(len).ok()?)
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The hash of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn named(mechanism: &str) -> Option<Hash> {
        match mechanism {
            "SCRAM-SHA-256" => Some(Hash::Sha256),
            "SCRAM-SHA-512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "SCRAM-SHA-256",
            Hash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn block(self) -> usize {
        match self {
            Hash::Sha256 => 64,
            Hash::Sha512 => 128,
        }
    }

    /// HMAC (RFC 2104).
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut key = if key.len() > self.block() {
            self.digest(key)
        } else {
            key.to_vec()
        };
        key.resize(self.block(), 0);
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let mut inner = pad(0x36);
        inner.extend_from_slice(data);
        let mut outer = pad(0x5c);
        outer.extend_from_slice(&self.digest(&inner));
        self.digest(&outer)
    }

    /// PBKDF2 with this HMAC, one block (RFC 8018): SCRAM's `Hi`.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut u = self.hmac(password, &first);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }
}

/// A SCRAM exchange after the client's first message.
struct Exchange {
    hash: Hash,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    salt: Vec<u8>,
}

impl Exchange {
    /// The client's first message (`n,,n=user,r=nonce`): the server's answer, or `None` if
    /// it names another user or is malformed.
    fn first(hash: Hash, user: &User, message: &str) -> Option<(Exchange, String)> {
        let bare = message.strip_prefix("n,,")?.to_string();
        let name = attribute(&bare, 'n')?;
        let client_nonce = attribute(&bare, 'r')?;
        if name != user.name {
            return None;
        }
        let nonce = format!("{client_nonce}{}", uuid::Uuid::new_v4().simple());
        let salt = uuid::Uuid::new_v4().as_bytes().to_vec();
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&salt));
        let exchange = Exchange {
            hash,
            client_first_bare: bare,
            server_first: server_first.clone(),
            nonce,
            salt,
        };
        Some((exchange, server_first))
    }

    /// The client's final message (`c=biws,r=nonce,p=proof`): the server's final one
    /// (`v=signature`), or `None` if the proof is not the password's.
    fn last(self, user: &User, message: &str) -> Option<String> {
        let (without_proof, proof) = message.rsplit_once(",p=")?;
        if attribute(without_proof, 'r')? != self.nonce {
            return None;
        }
        let proof = B64.decode(proof).ok()?;
        let hash = self.hash;
        let salted = hash.hi(user.password.as_bytes(), &self.salt, ITERATIONS);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.digest(&client_key);
        let auth = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hash.hmac(&stored_key, auth.as_bytes());
        let recovered: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if proof.len() != client_signature.len() || hash.digest(&recovered) != stored_key {
            return None;
        }
        let server_key = hash.hmac(&salted, b"Server Key");
        let signature = hash.hmac(&server_key, auth.as_bytes());
        Some(format!("v={}", B64.encode(signature)))
    }
}

/// The value of `name=` in a SCRAM message's comma-separated attributes.
fn attribute(message: &str, name: char) -> Option<String> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: user `user`, password `pencil`.
    #[test]
    fn the_rfc_example_authenticates() {
        let user = User {
            name: "user".into(),
            password: "pencil".into(),
        };
        let exchange = Exchange {
            hash: Hash::Sha256,
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            salt: B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
        };
        let last = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            exchange.last(&user, last).as_deref(),
            Some("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
    }
}
