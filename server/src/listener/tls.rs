//! TLS for the listener: loads the PEM certificate chain and key (checking that they belong
//! together), with modern defaults (TLS 1.2 and 1.3, rustls' safe cipher suites, the `ring`
//! provider), and swaps in new files on [`TlsSetup::reload`] (SIGHUP) without a restart.
//! A reload that fails keeps the previous certificate and says why.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the certificate or key cannot be used; each names the config key at fault.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file cannot be read or parsed as PEM.
    #[error("`{key}`: cannot read {path}: {reason}")]
    Unreadable {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("`tls_cert`: {path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported kind.
    #[error("`tls_key`: {0}")]
    Mismatch(String),
}

/// The listener's current TLS settings; see the module docs.
pub(crate) struct TlsSetup {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
}

impl TlsSetup {
    /// Loads the files.
    pub(crate) fn load(files: &TlsFiles) -> Result<TlsSetup, TlsError> {
        let config = build(files)?;
        Ok(TlsSetup {
            files: files.clone(),
            acceptor: RwLock::new(TlsAcceptor::from(config)),
        })
    }

    /// Re-reads the files; new handshakes use them, established connections are unaffected.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.acceptor.write() = TlsAcceptor::from(config);
        Ok(())
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Unreadable {
            key: "tls_cert",
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Unreadable {
        key: "tls_key",
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Mismatch(format!("unsupported private key in {key_path}: {e}")))?;
    CertifiedKey::new(certs.clone(), signing_key)
        .keys_match()
        .map_err(|e| {
            TlsError::Mismatch(format!(
                "the key in {key_path} does not belong to the certificate in {cert_path}: {e}"
            ))
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
