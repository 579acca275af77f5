//! A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1 signed by it,
//! and an unrelated second CA. Made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server certificate.
    pub ca_cert: PathBuf,
    /// Another CA, which signed nothing the server has.
    pub other_ca_cert: PathBuf,
    /// The server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl was not found on PATH: install it with `apt-get install openssl`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        Self {
            ca_cert: dir.join("ca.crt"),
            other_ca_cert: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }

    /// `redis-server` arguments that serve TLS with this PKI (clients need no certificate).
    pub fn server_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--tls-cert-file".into(),
            path(&self.server_cert),
            "--tls-key-file".into(),
            path(&self.server_key),
            "--tls-ca-cert-file".into(),
            path(&self.ca_cert),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}
