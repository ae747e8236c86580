//! Real services started by the harness on free loopback ports, in temp dirs, stopped on
//! drop (testing.md). A missing binary is a test failure when `SMELTER_REQUIRE_SERVICES=1`
//! (CI), and a loud skip otherwise.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelter_common::store::EtcdStore;
use tokio::time::Instant;

/// Whether missing services must fail the run.
pub fn services_required() -> bool {
    std::env::var("SMELTER_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Finds `name` on the PATH, or reports why a test cannot run.
pub fn binary(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match (&found, services_required()) {
        (None, true) => panic!(
            "`{name}` is required (SMELTER_REQUIRE_SERVICES=1) but not on PATH; scripts/test.sh installs it"
        ),
        (None, false) => eprintln!(
            "\n*** SKIPPED: `{name}` is not installed; run scripts/test.sh to install it ***\n"
        ),
        _ => {}
    }
    found
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A single-node etcd.
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    peer: u16,
    /// Client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits until it answers, or `None` if etcd is not installed (and not required).
    pub async fn start() -> Option<Etcd> {
        binary("etcd")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Self::spawn(dir.path(), &endpoint, peer);
        let etcd = Etcd {
            child,
            dir,
            peer,
            endpoint,
        };
        etcd.wait_ready().await;
        Some(etcd)
    }

    fn spawn(dir: &std::path::Path, endpoint: &str, peer: u16) -> Child {
        let peer_url = format!("http://127.0.0.1:{peer}");
        Command::new(binary("etcd").expect("etcd"))
            .args(["--name", "smelter-test", "--data-dir"])
            .arg(dir)
            .args([
                "--listen-client-urls",
                endpoint,
                "--advertise-client-urls",
                endpoint,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("smelter-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(store) = EtcdStore::connect(std::slice::from_ref(&self.endpoint)).await
                && smelter_common::store::CoordinationStore::get(&store, "/ready-probe")
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become ready at {}",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs etcd, keeps it down for `down`, then starts it again on the same data
    /// directory and ports, and waits until it answers.
    pub async fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = Self::spawn(self.dir.path(), &self.endpoint, self.peer);
        self.wait_ready().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker (Kafka protocol): in memory, or durable on an S3 store.
pub struct Tansu {
    child: Child,
    port: u16,
    /// The S3 endpoint of durable storage, if any.
    s3: Option<String>,
    /// Bootstrap servers, `127.0.0.1:<port>`.
    pub brokers: String,
}

impl Tansu {
    /// Starts tansu with in-memory storage and waits until it answers metadata requests,
    /// or `None` if tansu is not installed (and not required).
    pub async fn start() -> Option<Tansu> {
        Self::launch(None).await
    }

    /// Starts tansu storing its topics in bucket `tansu` of the S3 store `s3` (so they
    /// survive a broker restart).
    pub async fn start_durable(s3: &Moto) -> Option<Tansu> {
        s3.create_bucket("tansu");
        Self::launch(Some(s3.endpoint.clone())).await
    }

    fn spawn(port: u16, s3: Option<&str>) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(binary("tansu").expect("tansu"));
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match s3 {
            None => command.args(["--storage-engine", "memory://tansu/"]),
            Some(endpoint) => command
                .args(["--storage-engine", "s3://tansu/"])
                .env("AWS_ENDPOINT", endpoint)
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_ACCESS_KEY_ID", "smelter")
                .env("AWS_SECRET_ACCESS_KEY", "smelter")
                .env("AWS_DEFAULT_REGION", "us-east-1"),
        };
        command.spawn().expect("spawn tansu")
    }

    async fn launch(s3: Option<String>) -> Option<Tansu> {
        binary("tansu")?;
        let port = free_port();
        let tansu = Tansu {
            child: Self::spawn(port, s3.as_deref()),
            port,
            s3,
            brokers: format!("127.0.0.1:{port}"),
        };
        tansu.wait_ready().await;
        Some(tansu)
    }

    /// SIGKILLs the broker, keeps it down for `down`, then starts it on the same port and
    /// storage and waits until it answers.
    pub async fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = Self::spawn(self.port, self.s3.as_deref());
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::kafka::admin(&self.brokers)
            .inner()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "tansu did not become ready at {}",
                self.brokers
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3-compatible server (in memory), with conditional puts (`If-None-Match`).
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts `moto_server` and waits until it answers, or `None` if it is not installed
    /// (and not required).
    pub async fn start() -> Option<Moto> {
        let binary = binary("moto_server")?;
        let port = free_port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while moto.request("GET", "/").is_none() {
            assert!(Instant::now() < deadline, "moto did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(moto)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}"));
        assert!(
            status.is_some_and(|s| s < 300),
            "create bucket {bucket}: HTTP {status:?}"
        );
    }

    /// One bodiless HTTP/1.1 request; the status code, if the server answered.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
