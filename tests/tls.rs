//! TLS against real processes: clients (a rustls client and `redis-cli
//! --tls`) to the proxy, and the proxy to `redis-server` TLS ports. The
//! certificates (a CA and a server certificate for 127.0.0.1 / localhost)
//! are generated at test time with rcgen.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::TempDir;
use common::cluster::{Cluster, Spec};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use shardgate::app::TlsListen;
use shardgate::auth::Auth;
use shardgate::proxy::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and a server certificate signed by it, as PEM files.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn generate() -> Certs {
        Certs::generate_until(None)
    }

    /// A CA and a server certificate valid until `not_after` (year, month,
    /// day; rcgen's default when `None`).
    fn generate_until(not_after: Option<(i32, u8, u8)>) -> Certs {
        let dir = TempDir::new("tls");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // OpenSSL (redis-cli, redis-server) wants a named CA allowed to sign.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "shardgate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        };
        write("ca.pem", ca.pem());
        write("server.pem", cert.pem());
        write("server.key", key.serialize_pem());
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    fn listen(&self, beside: bool) -> TlsListen {
        TlsListen {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            listen: beside.then(|| "127.0.0.1:0".parse().expect("addr")),
        }
    }
}

/// `redis-cli --tls --cacert CA -p PORT args...`, stdout trimmed.
fn redis_cli_tls(certs: &Certs, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &certs.ca(), "-h", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sends `request` over a rustls connection trusting only the test CA and
/// reads until the reply ends with `until`.
async fn rustls_exchange(certs: &Certs, port: u16, request: &[u8], until: &[u8]) -> Vec<u8> {
    let config = shardgate::tls::client_config(Some(&certs.path("ca.pem"))).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = shardgate::tls::server_name("127.0.0.1:1", None).expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request).await.expect("write");
    tls.flush().await.expect("flush");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(until) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn clients_speak_tls_beside_the_plain_listener() {
    let certs = Certs::generate();
    let c = Cluster::start(Spec {
        shards: 2,
        tls: Some(certs.listen(true)),
        ..Spec::default()
    });
    let tls_port = c.tls_port.expect("TLS listener");
    assert_ne!(tls_port, c.proxy_port);
    assert_eq!(redis_cli_tls(&certs, tls_port, &["PING"]), "PONG");
    assert_eq!(redis_cli_tls(&certs, tls_port, &["SET", "{a}x", "1"]), "OK");
    assert_eq!(redis_cli_tls(&certs, tls_port, &["GET", "{a}x"]), "1");
    // A rustls client, pipelining.
    let reply = c.block_on(rustls_exchange(
        &certs,
        tls_port,
        b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"$1\r\nv\r\n",
    ));
    assert_eq!(reply, b"+PONG\r\n+OK\r\n$1\r\nv\r\n");
    // A plain client on the TLS port is dropped; the plain port still works.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", tls_port)).expect("connect");
    std::io::Write::write_all(&mut raw, b"*1\r\n$4\r\nPING\r\n").expect("write");
    raw.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut raw, &mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"+PONG"));
    let mut plain = c.conn();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut plain)
        .expect("plain get");
    assert_eq!(v, "v");
}

#[test]
fn tls_instead_of_plain_with_auth() {
    let certs = Certs::generate();
    let c = Cluster::start(Spec {
        shards: 2,
        tls: Some(certs.listen(false)),
        client: ClientConfig {
            auth: Some(Arc::new(Auth::requirepass(b"secret"))),
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    assert_eq!(c.tls_port, Some(c.proxy_port));
    assert_eq!(
        redis_cli_tls(&certs, c.proxy_port, &["GET", "k"]),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        redis_cli_tls(
            &certs,
            c.proxy_port,
            &["--no-auth-warning", "-a", "secret", "SET", "k", "1"]
        ),
        "OK"
    );
}

#[test]
fn backends_over_tls() {
    let certs = Certs::generate();
    let args: Vec<String> = [
        "--tls-cert-file",
        &certs.path("server.pem").display().to_string(),
        "--tls-key-file",
        &certs.path("server.key").display().to_string(),
        "--tls-ca-cert-file",
        &certs.ca(),
        "--tls-auth-clients",
        "no",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let c = Cluster::start(Spec {
        shards: 2,
        server_args: args,
        server_tls: true,
        shard_extra: format!("    tls: true\n    tls_ca: {}\n", certs.ca()),
        ..Spec::default()
    });
    // Multiplexed, dedicated (blocking) and RESP3 connections all use TLS.
    c.use_every_connection_kind();
    // The keys really are on the TLS servers.
    let on_servers: usize = c
        .primaries
        .iter()
        .map(|p| {
            let port = p.port.to_string();
            let out = Command::new("redis-cli")
                .args([
                    "--tls",
                    "--cacert",
                    &certs.ca(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                ])
                .arg("DBSIZE")
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(on_servers, 20);
}

/// A TLS session with the proxy at `port`, trusting only `certs`' CA, that
/// answered a PING (the handshake's error otherwise).
async fn tls_ping(
    certs: &Certs,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = shardgate::tls::client_config(Some(&certs.path("ca.pem"))).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = shardgate::tls::server_name("127.0.0.1:1", None).expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    ping_on(&mut tls).await;
    Ok(tls)
}

/// PING on an open session; panics unless it answers PONG.
async fn ping_on(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    tls.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("write");
    tls.flush().await.expect("flush");
    let mut buf = [0u8; 7];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(&buf, b"+PONG\r\n");
}

/// A series of the proxy's `/metrics` (0 when absent).
fn metric(port: u16, series: &str) -> f64 {
    common::rebalance::ureq_get(port)
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Certificate rotation without a restart: SIGHUP makes the listener
/// present the certificate now in the files to new handshakes, sessions
/// already open go on, and a pair that cannot be used (a key that is not
/// PEM, a key of another certificate) is refused with the one in use kept.
#[test]
fn sighup_reloads_the_listener_certificate_and_refuses_a_bad_one() {
    const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
    // 2039-01-15 and 2040-06-01, 00:00 UTC.
    let old = Certs::generate_until(Some((2039, 1, 15)));
    let new = Certs::generate_until(Some((2040, 6, 1)));
    let (old_expiry, new_expiry) = (2_178_662_400.0, 2_222_121_600.0);
    let live = TempDir::new("tls-live");
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    let install = |from: &Certs, cert_of: &Certs| {
        std::fs::copy(cert_of.path("server.pem"), &cert).expect("copy cert");
        std::fs::copy(from.path("server.key"), &key).expect("copy key");
    };
    // (The key of `from`, the certificate of `cert_of`.)
    install(&old, &old);
    let server = common::RedisServer::start();
    let dir = TempDir::new("tls-map");
    let map = common::write_map(&dir, &[&server]);
    let metrics = common::free_port();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let metrics_arg = format!("127.0.0.1:{metrics}");
    let (child, port) = common::spawn_proxy(
        BIN,
        &map,
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--metrics-listen",
            &metrics_arg,
        ],
    );
    common::wait_for_port(metrics);
    let hup = || common::signal_pid(child.id(), "HUP");
    let expiry = "shardgate_tls_certificate_expiry_timestamp_seconds";
    let reloads = |outcome: &str| {
        metric(
            metrics,
            &format!("shardgate_tls_reloads_total{{outcome=\"{outcome}\"}}"),
        )
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let mut open = rt
        .block_on(tls_ping(&old, port))
        .expect("the old certificate");
    assert!(rt.block_on(tls_ping(&new, port)).is_err());
    assert_eq!(metric(metrics, expiry), old_expiry);

    install(&new, &new);
    hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rt.block_on(tls_ping(&new, port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not put the new certificate in use"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let refused = rt
        .block_on(tls_ping(&old, port))
        .expect_err("old CA no longer fits");
    assert!(refused.contains("certificate"), "{refused}");
    rt.block_on(ping_on(&mut open));
    assert_eq!(reloads("ok"), 1.0);
    assert_eq!(metric(metrics, expiry), new_expiry);

    // A key that is not PEM, then the key of another certificate: refused,
    // the certificate in use stays.
    std::fs::write(&key, "not a key\n").expect("write");
    hup();
    let until_refused = |n: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reloads("refused") < n {
            assert!(std::time::Instant::now() < deadline, "reload not refused");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    until_refused(1.0);
    install(&old, &new);
    hup();
    until_refused(2.0);
    rt.block_on(tls_ping(&new, port))
        .expect("the certificate in use stays");
    rt.block_on(ping_on(&mut open));
    assert_eq!(reloads("ok"), 1.0);
    assert_eq!(metric(metrics, expiry), new_expiry);
}
