//! The server side of STARTTLS: rustls with `ssl/server.crt` and `ssl/server.key`, TLS 1.2
//! and 1.3 (the original offers 1.2 only; `dhparams.pem` is required but rustls uses ECDHE).

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "missing TLS file {0} (the home needs ssl/server.key, ssl/server.crt and ssl/dhparams.pem)"
    )]
    Missing(PathBuf),
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
}

/// Loads the identity from `<home>/ssl`; returns the acceptor and the key file's bytes (the
/// GENLOGIN seed).
pub fn load(ssl: &Path) -> Result<(tokio_rustls::TlsAcceptor, Vec<u8>), TlsError> {
    let read = |name: &str| {
        let path = ssl.join(name);
        std::fs::read(&path).map_err(|_| TlsError::Missing(path))
    };
    let key_pem = read("server.key")?;
    let cert_pem = read("server.crt")?;
    read("dhparams.pem")?;
    let bad = |name: &str, msg: String| TlsError::Bad {
        path: ssl.join(name),
        msg,
    };
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server.crt", e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("server.crt", "no certificate in the file".into()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| bad("server.key", e.to_string()))?
        .ok_or_else(|| bad("server.key", "no private key in the file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| bad("server.crt", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("server.key", e.to_string()))?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), key_pem))
}
