//! Real services started by the harness on free loopback ports, in temp dirs, stopped on
//! drop (docs/testing.md). A missing binary is a test failure when
//! `SMELTER_REQUIRE_SERVICES=1` or `CI=true`, and a loud skip otherwise: the test says so on
//! its output and appends its name to the file `SMELTER_SKIP_LOG` names, which
//! `scripts/test.sh` reads back into its summary (cargo counts a skipped test as passed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelter_common::store::EtcdStore;
use smelter_harness::wait_until;

/// Whether missing services must fail the run: always in CI.
pub fn services_required() -> bool {
    required_by(|name| std::env::var(name).ok())
}

/// [`services_required`], reading variables through `var`.
fn required_by(var: impl Fn(&str) -> Option<String>) -> bool {
    var("SMELTER_REQUIRE_SERVICES").is_some_and(|v| v == "1")
        || var("CI").is_some_and(|v| v == "true")
}

/// Records that the running test skips because `service` is missing: on stderr, and as a
/// line `<test>: <service>` in the file `SMELTER_SKIP_LOG` names, if any.
fn record_skip(service: &str) {
    record_skip_to(
        service,
        std::env::var_os("SMELTER_SKIP_LOG").map(std::path::PathBuf::from),
    );
}

fn record_skip_to(service: &str, log: Option<std::path::PathBuf>) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    eprintln!(
        "\n*** SKIPPED: {test}: `{service}` is not installed; run scripts/test.sh to install it ***\n"
    );
    if let Some(path) = log {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{test}: {service}"));
        if let Err(error) = appended {
            eprintln!("cannot record the skip in {}: {error}", path.display());
        }
    }
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
            "`{name}` is required (SMELTER_REQUIRE_SERVICES=1 or CI=true) but not on PATH; scripts/test.sh installs it"
        ),
        (None, false) => record_skip(name),
        _ => {}
    }
    found
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    smelter_harness::free_port().expect("a free port")
}

/// A single-node etcd.
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    peer: u16,
    /// Server certificate, key and the CA its clients' certificates must chain to.
    tls: Option<[PathBuf; 3]>,
    /// Client URL, `http://127.0.0.1:<port>` (`https://` over TLS).
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits until it answers, or `None` if etcd is not installed (and not required).
    pub async fn start() -> Option<Etcd> {
        Self::launch(None).await
    }

    /// Starts etcd serving TLS only, with `certs`' localhost certificate, and requiring
    /// client certificates signed by `certs`' CA.
    pub async fn start_tls(certs: &crate::certs::Certs) -> Option<Etcd> {
        Self::launch(Some([
            certs.cert.clone(),
            certs.key.clone(),
            certs.ca.clone(),
        ]))
        .await
    }

    async fn launch(tls: Option<[PathBuf; 3]>) -> Option<Etcd> {
        binary("etcd")?;
        for attempt in 1..=LAUNCH_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let (client, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let child = Self::spawn(dir.path(), &endpoint, peer, tls.as_ref());
            let mut etcd = Etcd {
                child,
                dir,
                peer,
                tls: tls.clone(),
                endpoint,
            };
            match etcd.wait_ready().await {
                Ok(()) => return Some(etcd),
                Err(why) => retry_or_panic("etcd", &etcd.endpoint, attempt, why),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn spawn(
        dir: &std::path::Path,
        endpoint: &str,
        peer: u16,
        tls: Option<&[PathBuf; 3]>,
    ) -> Child {
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new(binary("etcd").expect("etcd"));
        if let Some([cert, key, ca]) = tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        command
            .args(["--name", "smelter-test", "--data-dir"])
            .arg(dir.join("data"))
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
            .stderr(log_file(dir))
            .spawn()
            .expect("spawn etcd")
    }

    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let endpoint = self.endpoint.clone();
        // The server's own certificate serves as the probe's client certificate.
        let tls = self.tls.as_ref().map(|[cert, key, ca]| {
            let read = |path: &PathBuf| std::fs::read(path).expect("a PEM file of the test CA");
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca)))
                .identity(etcd_client::Identity::from_pem(read(cert), read(key)))
        });
        until_ready(&mut self.child, self.dir.path(), || async {
            match EtcdStore::connect_with(std::slice::from_ref(&endpoint), tls.clone()).await {
                Ok(store) => smelter_common::store::CoordinationStore::get(&store, "/ready-probe")
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await
    }

    /// etcd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs etcd, keeps it down for `down`, then starts it again on the same data
    /// directory and ports, and waits until it answers. Panics unless the kill landed on a
    /// running etcd and its port was closed meanwhile.
    pub async fn restart(&mut self, down: Duration) {
        kill_for_real(&mut self.child, "etcd");
        assert_refused(&self.endpoint, "etcd");
        tokio::time::sleep(down).await;
        assert_refused(&self.endpoint, "etcd");
        self.child = Self::spawn(
            self.dir.path(),
            &self.endpoint,
            self.peer,
            self.tls.as_ref(),
        );
        if let Err(why) = self.wait_ready().await {
            panic!("etcd did not come back at {}: {why}", self.endpoint);
        }
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
    /// Holds the broker's log.
    dir: tempfile::TempDir,
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

    fn spawn(dir: &std::path::Path, port: u16, s3: Option<&str>) -> Child {
        Self::spawn_advertising(dir, port, port, s3)
    }

    /// Tansu listening on `port` and telling clients to connect to `advertised`.
    fn spawn_advertising(
        dir: &std::path::Path,
        port: u16,
        advertised: u16,
        s3: Option<&str>,
    ) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let mut command = Command::new(binary("tansu").expect("tansu"));
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(log_file(dir));
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
        for attempt in 1..=LAUNCH_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let mut tansu = Tansu {
                child: Self::spawn(dir.path(), port, s3.as_deref()),
                port,
                dir,
                s3: s3.clone(),
                brokers: format!("127.0.0.1:{port}"),
            };
            match tansu.wait_ready().await {
                Ok(()) => return Some(tansu),
                Err(why) => retry_or_panic("tansu", &tansu.brokers, attempt, why),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// SIGKILLs the broker, keeps it down for `down`, then starts it on the same port and
    /// storage and waits until it answers. Panics unless the kill landed on a running
    /// broker and its port was closed meanwhile.
    pub async fn restart(&mut self, down: Duration) {
        kill_for_real(&mut self.child, "tansu");
        assert_refused(&self.brokers, "tansu");
        tokio::time::sleep(down).await;
        assert_refused(&self.brokers, "tansu");
        self.child = Self::spawn(self.dir.path(), self.port, self.s3.as_deref());
        if let Err(why) = self.wait_ready().await {
            panic!("tansu did not come back at {}: {why}", self.brokers);
        }
    }

    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let brokers = self.brokers.clone();
        until_ready(&mut self.child, self.dir.path(), || async {
            crate::kafka::admin(&brokers)
                .inner()
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
        })
        .await
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tansu (in memory) reached only over TLS: tansu 0.6 takes `--cert`/`--key` but never
/// serves TLS, so stunnel terminates it in front, with a certificate of the run's CA, and
/// the broker advertises stunnel's port — every client connection, bootstrap and
/// metadata-directed alike, goes through TLS.
pub struct TlsTansu {
    tansu: Child,
    stunnel: Child,
    /// Holds both logs and stunnel's configuration.
    dir: tempfile::TempDir,
    /// Bootstrap servers (stunnel's TLS port), `127.0.0.1:<port>`.
    pub brokers: String,
    /// With SASL: the SCRAM gate between stunnel and the broker, and its user.
    pub gate: Option<(crate::scram::ScramGate, String, String)>,
}

impl TlsTansu {
    /// Starts tansu and stunnel and waits until a TLS client that trusts `certs.ca` gets
    /// metadata, or `None` if either is not installed (and not required).
    pub async fn start(certs: &crate::certs::Certs) -> Option<TlsTansu> {
        Self::launch(certs, None).await
    }

    /// [`Self::start`] with SASL/SCRAM too: stunnel passes the connections to a
    /// [`ScramGate`](crate::scram::ScramGate) that authenticates `user` with `password`
    /// before the broker sees them (`SASL_SSL`).
    pub async fn start_scram(
        certs: &crate::certs::Certs,
        user: &str,
        password: &str,
    ) -> Option<TlsTansu> {
        Self::launch(certs, Some((user, password))).await
    }

    /// Client settings for this broker: TLS trusting `ca`, and SCRAM as the gate's user.
    pub fn client_config(&self, ca: &Path) -> rdkafka::ClientConfig {
        match &self.gate {
            Some((_, user, password)) => {
                crate::kafka::scram_config(&self.brokers, ca, user, password)
            }
            None => crate::kafka::tls_config(&self.brokers, ca),
        }
    }

    async fn launch(certs: &crate::certs::Certs, scram: Option<(&str, &str)>) -> Option<TlsTansu> {
        binary("tansu")?;
        let stunnel = binary("stunnel4")?;
        for attempt in 1..=LAUNCH_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let (plain, tls) = (free_port(), free_port());
            let gate = match scram {
                Some((user, password)) => Some((
                    crate::scram::ScramGate::start(plain, user, password).await,
                    user.to_string(),
                    password.to_string(),
                )),
                None => None,
            };
            let behind = gate.as_ref().map_or(plain, |(gate, _, _)| gate.port);
            let config = dir.path().join("stunnel.conf");
            std::fs::write(
                &config,
                format!(
                    "foreground = yes\npid =\noutput = {log}\n[kafka]\naccept = 127.0.0.1:{tls}\n\
                     connect = 127.0.0.1:{behind}\ncert = {cert}\nkey = {key}\n",
                    log = dir.path().join("stunnel.log").display(),
                    cert = certs.cert.display(),
                    key = certs.key.display(),
                ),
            )
            .expect("stunnel configuration");
            let mut tansu = TlsTansu {
                tansu: Tansu::spawn_advertising(dir.path(), plain, tls, None),
                stunnel: Command::new(&stunnel)
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn stunnel"),
                dir,
                brokers: format!("127.0.0.1:{tls}"),
                gate,
            };
            let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = tansu
                .client_config(&certs.ca)
                .create()
                .expect("an admin client");
            let ready = until_ready(&mut tansu.stunnel, tansu.dir.path(), || async {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok()
            })
            .await;
            let tansu_exited = tansu.tansu.try_wait().ok().flatten();
            match (ready, tansu_exited) {
                (Ok(()), None) => return Some(tansu),
                (Ok(()), Some(status)) | (Err(NotReady::Exited(status, _)), _) => {
                    retry_or_panic(
                        "tansu behind stunnel",
                        &tansu.brokers,
                        attempt,
                        NotReady::Exited(status, String::new()),
                    );
                }
                (Err(why), _) => {
                    retry_or_panic("tansu behind stunnel", &tansu.brokers, attempt, why)
                }
            }
        }
        unreachable!("the last attempt panics")
    }
}

impl Drop for TlsTansu {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// moto's S3-compatible server (in memory), with conditional puts (`If-None-Match`).
pub struct Moto {
    child: Child,
    /// Holds the server's log.
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts `moto_server` and waits until it answers, or `None` if it is not installed
    /// (and not required).
    pub async fn start() -> Option<Moto> {
        let binary = binary("moto_server")?;
        for attempt in 1..=LAUNCH_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(log_file(dir.path()))
                .spawn()
                .expect("spawn moto_server");
            let mut moto = Moto {
                child,
                dir,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            let endpoint = moto.endpoint.clone();
            let ready = until_ready(&mut moto.child, moto.dir.path(), || async {
                request(&endpoint, "GET", "/").is_some()
            })
            .await;
            match ready {
                Ok(()) => return Some(moto),
                Err(why) => retry_or_panic("moto", &moto.endpoint, attempt, why),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let status = request(&self.endpoint, "PUT", &format!("/{bucket}"));
        assert!(
            status.is_some_and(|s| s < 300),
            "create bucket {bucket}: HTTP {status:?}"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bodiless HTTP/1.1 request to `endpoint`; the status code, if the server answered.
fn request(endpoint: &str, method: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
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

/// SIGKILLs `child`, which must still be running, and reaps it.
fn kill_for_real(child: &mut Child, service: &str) {
    assert!(
        child.try_wait().expect("process state").is_none(),
        "{service} was already gone before the kill"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "{service} ended by the kill ({status})");
}

/// Panics unless nothing accepts connections at `address` (`host:port`, or a URL).
fn assert_refused(address: &str, service: &str) {
    let address = address.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "{service} at {address} still accepts connections while it should be down"
    );
}

/// How many times a service is started on fresh ports before a test gives up. A port is
/// chosen free and then bound by the service a moment later; another test's process can
/// take it in between, and the service exits.
const LAUNCH_ATTEMPTS: u32 = 3;

/// Why a started service is not answering.
#[derive(Debug)]
enum NotReady {
    /// The process ended; the tail of its log.
    Exited(std::process::ExitStatus, String),
    /// Still running but not answering after 30 s.
    Silent,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status, log) => write!(f, "exited ({status}); its log ends:\n{log}"),
            NotReady::Silent => write!(f, "not answering after 30 s"),
        }
    }
}

/// The log file a service in `dir` writes its stderr to.
fn log_file(dir: &std::path::Path) -> std::fs::File {
    std::fs::File::create(dir.join("service.log")).expect("service log")
}

/// Polls `ready` until it answers, the process exits, or 30 s pass.
async fn until_ready<F, Fut>(
    child: &mut Child,
    dir: &std::path::Path,
    mut ready: F,
) -> Result<(), NotReady>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut exited = None;
    let answered = wait_until(
        Duration::from_secs(30),
        "the service answering",
        async || {
            if ready().await {
                return true;
            }
            exited = child.try_wait().ok().flatten();
            exited.is_some()
        },
    )
    .await;
    match (answered, exited) {
        (_, Some(status)) => {
            let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(NotReady::Exited(status, tail))
        }
        (Ok(()), None) => Ok(()),
        (Err(_), None) => Err(NotReady::Silent),
    }
}

/// Goes on to the next launch attempt when the service exited (its port was likely taken
/// between choosing and binding it), and panics on the last attempt or when it hangs.
fn retry_or_panic(service: &str, address: &str, attempt: u32, why: NotReady) {
    match why {
        NotReady::Exited(..) if attempt < LAUNCH_ATTEMPTS => {
            eprintln!("{service} at {address} {why}\nstarting it again on fresh ports");
        }
        why => panic!("{service} did not become ready at {address}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A skip leaves the test's name in the skip log, for the run's summary.
    #[test]
    fn a_skip_is_recorded_with_the_test_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("skipped.log");
        record_skip_to("etcd", Some(log.clone()));
        record_skip_to("tansu", Some(log.clone()));
        let text = std::fs::read_to_string(&log).expect("the skip log");
        let test = "services::tests::a_skip_is_recorded_with_the_test_name";
        assert_eq!(text, format!("{test}: etcd\n{test}: tansu\n"));
    }

    /// CI never skips, whatever `SMELTER_REQUIRE_SERVICES` says.
    #[test]
    fn ci_requires_every_service() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(required_by(vars(&[("CI", "true")])));
        assert!(required_by(vars(&[
            ("CI", "true"),
            ("SMELTER_REQUIRE_SERVICES", "0")
        ])));
        assert!(required_by(vars(&[("SMELTER_REQUIRE_SERVICES", "1")])));
        assert!(!required_by(vars(&[])));
        assert!(!required_by(vars(&[("SMELTER_REQUIRE_SERVICES", "0")])));
    }
}
