//! The TLS identity of a store server: `ssl/server.key`, `ssl/server.crt`, `ssl/dhparams.pem`.
//! The original requires all three at start even without TLS (docs/protocol.md §9.1), so a
//! storeherd deployment generates one identity once and installs it in every home.

use std::fs;
use std::path::{Path, PathBuf};

/// RFC 7919 `ffdhe2048`: standard, published DH parameters, valid for OpenSSL (the original
/// loads them) and never used by rustls, which negotiates ECDHE.
pub const FFDHE2048_PEM: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("generating the TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// PEM texts of one identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub dhparams_pem: String,
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256). Clients of the protocol never check the
    /// certificate against a CA; peers pin its SHA-1 (`repl_cert`).
    pub fn generate(common_name: &str) -> Result<Identity, IdentityError> {
        let cert = rcgen::generate_simple_self_signed(vec![common_name.to_string()])?;
        Ok(Identity {
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
            dhparams_pem: FFDHE2048_PEM.to_string(),
        })
    }

    /// Reads `server.crt`, `server.key` and `dhparams.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| IdentityError::Io { path, source })
        };
        Ok(Identity {
            cert_pem: read("server.crt")?,
            key_pem: read("server.key")?,
            dhparams_pem: read("dhparams.pem")?,
        })
    }

    /// Writes the three files into `dir` (created if missing); the key with mode 600.
    pub fn install(&self, dir: &Path) -> Result<(), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&dir.join("server.crt"), &self.cert_pem, 0o644)?;
        write_file(&dir.join("server.key"), &self.key_pem, 0o600)?;
        write_file(&dir.join("dhparams.pem"), &self.dhparams_pem, 0o644)?;
        Ok(())
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), IdentityError> {
    crate::store::replace_file(path, text.as_bytes(), mode).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_install_load() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate("storeherd").unwrap();
        id.install(&dir.path().join("ssl")).unwrap();
        let back = Identity::load(&dir.path().join("ssl")).unwrap();
        assert_eq!(back.cert_pem, id.cert_pem);
        assert!(back.key_pem.contains("PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ssl/server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
