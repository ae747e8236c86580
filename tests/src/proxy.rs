//! A TCP proxy the test controls, standing between one process and a service (etcd, the
//! coordinator), for network partitions: [`Proxy::cut`] stops every byte both ways and
//! [`Proxy::heal`] lets them through again.
//!
//! It models a partition shorter than TCP's retransmission timeout: packets sent during the
//! cut are lost on the wire and retransmitted, so nothing is refused or reset (nothing tells
//! the client) and, after the heal, whatever was sent arrives late and in order on the same
//! connection. That lateness is the point: a request written before the cut is answered
//! only after it, when the lease it relied on has lapsed. A connection opened during the cut
//! is accepted (the kernel completes the handshake) and then hears nothing until the heal.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// A proxy from a loopback port to `target`.
pub struct Proxy {
    /// `127.0.0.1:<port>`: where the process under test is pointed.
    pub address: String,
    /// The partition state: `true` while cut.
    cut: watch::Sender<bool>,
    /// Owns the accept loop, which owns every relay (dropping the proxy ends them all).
    _accept: AbortOnDropHandle<()>,
}

impl Proxy {
    /// Starts relaying from a free loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (cut, _) = watch::channel(false);
        let accept = {
            let (cut, target) = (cut.subscribe(), target.to_string());
            tokio::spawn(async move {
                let mut relays = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { return };
                            relays.spawn(relay(client, target.clone(), cut.clone()));
                        }
                        Some(_) = relays.join_next(), if !relays.is_empty() => {}
                    }
                }
            })
        };
        Ok(Proxy {
            address,
            cut,
            _accept: AbortOnDropHandle::new(accept),
        })
    }

    /// Holds every byte, both ways, from now until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Delivers what was held and relays again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

/// Waits while the partition is on.
async fn passable(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !cut).await;
}

/// Relays one connection until either side closes. Nothing is read while cut, and what was
/// read just before the cut is written only after the heal: bytes are late, never lost.
async fn relay(mut client: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    passable(&mut cut).await;
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        passable(&mut cut).await;
        // Read from whichever side speaks first, unless the cut comes first.
        let (read, upstream) = tokio::select! {
            read = client_read.read(&mut up) => (read, true),
            read = server_read.read(&mut down) => (read, false),
            _ = async { let _ = cut.wait_for(|cut| *cut).await; } => continue,
        };
        let Ok(n @ 1..) = read else { return };
        // Read just before a cut: delivered after the heal.
        passable(&mut cut).await;
        let written = if upstream {
            server_write.write_all(&up[..n]).await
        } else {
            client_write.write_all(&down[..n]).await
        };
        if written.is_err() {
            return;
        }
    }
}
