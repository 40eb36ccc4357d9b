//! `shardgate health`: the metrics listener's health endpoints from the
//! command line (for probes that cannot speak HTTP themselves).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// `shardgate health`: one HTTP/1.1 GET to the metrics listener; prints the
/// status line and the body, succeeds on 200.
pub fn health(addr: SocketAddr, path: &str, timeout: Duration) -> ExitCode {
    use std::io::{Read, Write};
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.take(64 * 1024).read_to_string(&mut reply)?;
        Ok(reply)
    })();
    match answer {
        Ok(reply) => {
            let status = reply.lines().next().unwrap_or_default();
            let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            println!("{status}: {}", body.trim_end());
            if status.split(' ').nth(1) == Some("200") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("http://{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
