//! TLS for `wss://` targets: a rustls client configuration with the `ring` crypto provider, the
//! webpki (Mozilla) roots by default, and extra roots given as PEM (a private CA, a test CA).

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::Error;

/// Parses every `CERTIFICATE` block of a PEM document; fails when there is none or one is
/// malformed.
pub(crate) fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("cannot read PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(
            "no CERTIFICATE block found in the PEM data".into(),
        ));
    }
    Ok(certs)
}

/// A client configuration trusting `extra` roots, plus the webpki roots when `webpki` is set.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
    webpki: bool,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    if webpki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Tls(format!("cannot use root certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(
            "no trusted roots: the webpki roots are off and no root certificate was added".into(),
        ));
    }
    // The provider is named rather than taken from the process default, so another crate
    // enabling aws-lc-rs cannot make `builder()` ambiguous.
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot configure TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_text_without_certificates() {
        let err = parse_pem_certificates(b"hello").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(parse_pem_certificates(bad).is_err());
    }

    #[test]
    fn webpki_roots_make_a_config() {
        client_config(&[], true).unwrap();
        assert!(client_config(&[], false).is_err());
    }
}
