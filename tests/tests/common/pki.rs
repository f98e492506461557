//! Test certificates made at test time with rcgen: a CA and a server certificate for
//! 127.0.0.1/localhost, written as PEM files for the server's `--tls-cert`/`--tls-key`, and a
//! rustls client config that trusts the CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use redistribute_testkit::{server_binary, ServerProcess};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

/// A CA with one server certificate, as PEM files in a temp dir.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM text) clients must trust.
    pub ca_pem: String,
    /// Server certificate chain file.
    pub cert: PathBuf,
    /// Server private key file.
    pub key: PathBuf,
}

impl Pki {
    /// Starts the server binary with this certificate on its listener (`--tls-cert`,
    /// `--tls-key`) and `extra` flags, ready once TLS handshakes succeed.
    pub async fn start_server(&self, extra: &[&str]) -> Result<ServerProcess> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let server = ServerProcess::spawn(&server_binary(), &args, &[])?;
        self.wait_for_server(server.addr())
            .await
            .with_context(|| server.logs())?;
        Ok(server)
    }

    /// Waits until a TLS handshake trusting only this CA succeeds at `addr`.
    pub async fn wait_for_server(&self, addr: SocketAddr) -> Result<()> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config()?);
        for _ in 0..200 {
            if let Ok(tcp) = TcpStream::connect(addr).await {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                if connector.connect(name, tcp).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("TLS listener never became ready")
    }

    /// Generates a CA and a server certificate for 127.0.0.1 and localhost.
    pub fn generate() -> Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redistribute test CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = tempfile::tempdir()?;
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Pki {
            _dir: dir,
            ca_pem: ca_cert.pem(),
            cert: cert_path,
            key: key_path,
        })
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}
