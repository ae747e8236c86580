//! A throwaway certificate authority for the TLS tests, made with the `openssl` command:
//! a CA, a certificate for `localhost`/`127.0.0.1` good for servers and clients (every
//! Smelter process is both), and a second, untrusted CA with a certificate of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PEM files of one throwaway CA, in a temp directory that lives as long as this.
pub struct Certs {
    _dir: tempfile::TempDir,
    /// The trusted CA's certificate.
    pub ca: PathBuf,
    /// A certificate it signed for localhost (server and client use).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The untrusted CA's certificate.
    pub rogue_ca: PathBuf,
    /// A localhost certificate the untrusted CA signed.
    pub rogue_cert: PathBuf,
    /// Its key.
    pub rogue_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian package openssl) is needed for TLS tests");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `name`-ca.pem and a localhost certificate `name`.pem / `name`-key.pem it signed.
fn authority(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca-key.pem");
    let ca = format!("{name}-ca.pem");
    let subject = format!("/CN=smelter test CA {name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let key = format!("{name}-key.pem");
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write the certificate extensions");
    let cert = format!("{name}.pem");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

impl Certs {
    /// Generates both authorities.
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        authority(dir.path(), "smelter");
        authority(dir.path(), "rogue");
        let at = |name: &str| dir.path().join(name);
        Certs {
            ca: at("smelter-ca.pem"),
            cert: at("smelter.pem"),
            key: at("smelter-key.pem"),
            rogue_ca: at("rogue-ca.pem"),
            rogue_cert: at("rogue.pem"),
            rogue_key: at("rogue-key.pem"),
            _dir: dir,
        }
    }

    /// The file at `path`.
    pub fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("a generated PEM file")
    }
}
