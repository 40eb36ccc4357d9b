//! TLS with rustls (the `ring` provider): certificate loading for the client
//! listener and for backend connections, and [`MaybeTls`], one stream type
//! for plain and TLS sockets so the connection loops stay the same code.
//!
//! Plain sockets keep tokio's lock-free `into_split` halves; only TLS
//! streams, which cannot be split without sharing the session, go through
//! `tokio::io::split`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, pki_types};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate, key or CA could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    /// The file (or the setting) at fault.
    pub path: String,
    pub reason: String,
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The client listener's certificate chain and private key, read from
/// their PEM files at start and again by [`ServerCert::reload`] (on
/// SIGHUP): handshakes from then on present the new certificate; sessions
/// already open keep theirs. A reload that fails (a file unreadable, not
/// PEM, a key that does not fit the certificate) changes nothing.
#[derive(Debug)]
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ServerCert {
    /// Reads the certificate chain `cert` and its private key `key`
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerCert, TlsError> {
        Ok(ServerCert {
            current: ArcSwap::new(Arc::new(certified_key(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads both files again; the new certificate is used for the
    /// handshakes that follow. On an error the one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// When the certificate in use expires (its `notAfter`, Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current.load();
        let der = current.end_entity_cert().ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(key, format!("cannot read a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, der, &provider())
        .map_err(|e| tls_err(cert, format!("certificate and key do not fit: {e}")))
}

/// The TLS setup of the client listener, presenting `cert`'s certificate
/// (the one in use at each handshake).
pub fn server_config(cert: Arc<ServerCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&cert.cert, e))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(Arc::new(config))
}

/// The TLS setup towards backends: trust the CAs in the PEM file `ca`, or
/// the system's roots when there is none.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| tls_err(path, format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(TlsError {
                    path: "(system roots)".to_owned(),
                    reason: "no CA certificate found; give tls_ca".to_owned(),
                });
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: "(tls)".to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A name a server certificate cannot be checked against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{host}`: {reason}")]
pub struct InvalidServerName {
    pub host: String,
    pub reason: String,
}

/// The server name to verify a backend's certificate against: `name`, or
/// the host part of `host:port`.
pub fn server_name(
    addr: &str,
    name: Option<&str>,
) -> Result<pki_types::ServerName<'static>, InvalidServerName> {
    let host = match name {
        Some(n) => n,
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        }
    };
    pki_types::ServerName::try_from(host.to_owned()).map_err(|e| InvalidServerName {
        host: host.to_owned(),
        reason: e.to_string(),
    })
}

/// A plain or a TLS stream (or halves of one), read and written alike.
pub enum MaybeTls<P, T> {
    Plain(P),
    Tls(T),
}

/// A client connection, accepted plain or over TLS.
pub type ClientStream = MaybeTls<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;
/// The read half of a [`ClientStream`].
pub type ClientRead =
    MaybeTls<OwnedReadHalf, ReadHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>>;
/// The write half of a [`ClientStream`].
pub type ClientWrite =
    MaybeTls<OwnedWriteHalf, WriteHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>>;

/// A backend connection, plain or over TLS.
pub type BackendStream = MaybeTls<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;
/// The read half of a [`BackendStream`].
pub type BackendRead =
    MaybeTls<OwnedReadHalf, ReadHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>>;
/// The write half of a [`BackendStream`].
pub type BackendWrite =
    MaybeTls<OwnedWriteHalf, WriteHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>>;

impl<T: AsyncRead + AsyncWrite> MaybeTls<TcpStream, T> {
    /// Read and write halves that can be used from two tasks or futures.
    #[allow(clippy::type_complexity)]
    pub fn split(
        self,
    ) -> (
        MaybeTls<OwnedReadHalf, ReadHalf<T>>,
        MaybeTls<OwnedWriteHalf, WriteHalf<T>>,
    ) {
        match self {
            MaybeTls::Plain(s) => {
                let (r, w) = s.into_split();
                (MaybeTls::Plain(r), MaybeTls::Plain(w))
            }
            MaybeTls::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (MaybeTls::Tls(r), MaybeTls::Tls(w))
            }
        }
    }
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for MaybeTls<P, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<P, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
