//! A RESP client that works in whole reply frames and returns their raw
//! bytes, so tests can compare replies byte for byte (proxy vs redis-server).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use shardgate::protocol::request::encode_command;
use shardgate::protocol::scan::frame_len;

/// A raw RESP connection that reads whole reply frames.
pub struct FrameConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl FrameConn {
    /// Connects to `127.0.0.1:port` (reads time out after 10 s).
    pub fn connect(port: u16) -> FrameConn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        FrameConn { s, buf: Vec::new() }
    }

    /// Sends one command and returns its reply frame.
    pub fn call(&mut self, args: &[&str]) -> Vec<u8> {
        self.pipeline(&[args]).pop().expect("one reply")
    }

    /// Sends the commands in one write and returns their reply frames.
    pub fn pipeline<S: AsRef<str>>(&mut self, cmds: &[&[S]]) -> Vec<Vec<u8>> {
        let mut out = BytesMut::new();
        for args in cmds {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_ref().as_bytes()).collect();
            encode_command(&refs, &mut out);
        }
        self.s.write_all(&out).expect("write");
        (0..cmds.len()).map(|_| self.frame()).collect()
    }

    /// Sends one command without waiting for its reply.
    pub fn send(&mut self, args: &[&str]) {
        let mut out = BytesMut::new();
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode_command(&refs, &mut out);
        self.s.write_all(&out).expect("write");
    }

    /// The next frame, if one arrives within `wait`.
    pub fn frame_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(n)) = frame_len(&self.buf) {
                return Some(self.buf.drain(..n).collect());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            self.s.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            let r = self.s.read(&mut chunk);
            self.s
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            match r {
                Ok(0) => panic!("connection closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next frame (waits up to the read timeout).
    pub fn frame(&mut self) -> Vec<u8> {
        loop {
            if let Ok(Some(n)) = frame_len(&self.buf) {
                return self.buf.drain(..n).collect();
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read reply");
            assert!(n > 0, "connection closed before a whole reply arrived");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
