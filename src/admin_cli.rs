//! `shardgate admin plan|rebalance|follow|status|pause|resume|throttle`: a
//! small RESP client of the admin listener; `follow` also reads a fleet's
//! state straight from etcd (`--etcd`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shardgate::protocol::{reply, request::encode_command, scan};

/// Where the admin listener is and its password.
#[derive(clap::Args)]
pub struct AdminConn {
    /// The admin listener (`serve --admin-listen`).
    #[arg(long, default_value = "127.0.0.1:6390")]
    admin: SocketAddr,
    /// Environment variable holding the admin password.
    #[arg(long, default_value = "SHARDGATE_ADMIN_PASSWORD")]
    password_env: String,
}

/// What to ask.
pub enum Op {
    Plan(PathBuf),
    Rebalance {
        map: PathBuf,
        wait: bool,
        /// Keys per second from the first batch (0: no limit).
        throttle: u64,
    },
    /// Follow the running rebalance with the progress bar.
    Follow,
    Status,
    Pause,
    Resume,
    Throttle(u64),
}

/// Why an admin command failed (printed, and the exit status is 1).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin connection: {0}")]
    Protocol(#[from] shardgate::protocol::ProtocolError),
    #[error("the admin listener closed the connection")]
    Closed,
    #[error(
        "set the admin password in the environment variable {0} (or name another with --password-env)"
    )]
    NoPassword(String),
    #[error("{path}: {source}")]
    ReadMap {
        path: String,
        source: std::io::Error,
    },
    /// The admin listener answered with an error (its text).
    #[error("{0}")]
    Refused(String),
    #[error("unexpected {0} reply")]
    Unexpected(&'static str),
    #[error("rebalance failed: {0}")]
    Failed(String),
    #[error("no rebalance is known (none runs, none finished)")]
    NoRebalance,
    #[error(transparent)]
    Coord(#[from] shardgate::coord::CoordError),
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn call(&mut self, args: &[&[u8]]) -> Result<Bytes, CliError> {
        let mut frame = BytesMut::new();
        encode_command(args, &mut frame);
        self.stream.write_all(&frame).await?;
        loop {
            if let Some(n) = scan::frame_len(&self.buf)? {
                return Ok(self.buf.split_to(n).freeze());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(CliError::Closed);
            }
        }
    }
}

/// Runs one admin command; prints its result.
pub fn run((conn, op): (AdminConn, Op)) -> ExitCode {
    let Some(rt) = crate::current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run_op(conn, op)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn text(frame: &Bytes) -> Result<String, CliError> {
    if reply::is_error(frame) {
        return Err(CliError::Refused(
            reply::error_text(frame).unwrap_or_default(),
        ));
    }
    if let Some(b) = reply::bulk(frame) {
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    if let Ok(Some(elems)) = reply::array_elements(frame) {
        let lines: Vec<String> = elems.iter().filter_map(|e| text(e).ok()).collect();
        return Ok(lines.join("\n"));
    }
    // +simple
    Ok(String::from_utf8_lossy(frame.get(1..).unwrap_or_default())
        .trim_end()
        .to_owned())
}

async fn run_op(conn: AdminConn, op: Op) -> Result<(), CliError> {
    let stream = TcpStream::connect(conn.admin)
        .await
        .map_err(|source| CliError::Connect {
            addr: conn.admin,
            source,
        })?;
    let mut c = Client {
        stream,
        buf: BytesMut::new(),
    };
    let password = std::env::var(&conn.password_env)
        .map_err(|_| CliError::NoPassword(conn.password_env.clone()))?;
    text(&c.call(&[b"AUTH", password.as_bytes()]).await?)?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|source| CliError::ReadMap {
            path: p.display().to_string(),
            source,
        })
    };
    match op {
        Op::Plan(map) => println!(
            "{}",
            text(&c.call(&[b"PLAN", read(&map)?.as_bytes()]).await?)?
        ),
        Op::Status => println!(
            "{}",
            text(&c.call(&[b"STATUS"]).await?)?.replace("\r\n", "\n")
        ),
        Op::Pause => println!("{}", text(&c.call(&[b"PAUSE"]).await?)?),
        Op::Resume => println!("{}", text(&c.call(&[b"RESUME"]).await?)?),
        Op::Throttle(n) => println!(
            "{}",
            text(&c.call(&[b"THROTTLE", n.to_string().as_bytes()]).await?)?
        ),
        Op::Follow => return follow(Source::Admin(&mut c)).await,
        Op::Rebalance {
            map,
            wait,
            throttle,
        } => {
            let yaml = read(&map)?;
            let throttle = throttle.to_string();
            let mut args: Vec<&[u8]> = vec![b"REBALANCE", yaml.as_bytes()];
            if throttle != "0" {
                args.extend([b"THROTTLE".as_slice(), throttle.as_bytes()]);
            }
            println!("{}", text(&c.call(&args).await?)?);
            if wait {
                return follow(Source::Admin(&mut c)).await;
            }
        }
    }
    Ok(())
}

/// Where [`follow`] reads the progress.
enum Source<'a> {
    /// A proxy's admin listener (PROGRESS).
    Admin(&'a mut Client),
    /// A fleet's state in etcd and its movers' recorded counts.
    Etcd(&'a shardgate::coord::Coord),
}

impl Source<'_> {
    /// Field/value pairs as PROGRESS gives them.
    async fn progress(&mut self) -> Result<Vec<(String, String)>, CliError> {
        match self {
            Source::Admin(c) => progress(c).await,
            Source::Etcd(coord) => {
                let state = coord.state().await?;
                let moved = coord.progress().await?;
                Ok(
                    match state.and_then(|s| shardgate::rebalance::fleet_progress(&s, moved)) {
                        Some(p) => p
                            .fields()
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                        None => vec![("state".to_owned(), "none".to_owned())],
                    },
                )
            }
        }
    }
}

/// `shardgate admin follow --etcd`: the progress bar from the fleet's
/// state in etcd (no proxy asked).
pub fn follow_etcd(endpoints: &[String], cluster: &str) -> ExitCode {
    let Some(rt) = crate::current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let coord = shardgate::coord::Coord::connect(endpoints, cluster).await?;
        follow(Source::Etcd(&coord)).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Field/value pairs of PROGRESS.
async fn progress(c: &mut Client) -> Result<Vec<(String, String)>, CliError> {
    let frame = c.call(&[b"PROGRESS"]).await?;
    if reply::is_error(&frame) {
        return Err(CliError::Refused(
            reply::error_text(&frame).unwrap_or_default(),
        ));
    }
    let elems = reply::array_elements(&frame)
        .ok()
        .flatten()
        .ok_or(CliError::Unexpected("PROGRESS"))?;
    let vals: Vec<String> = elems
        .iter()
        .map(|e| reply::bulk(e).map_or(String::new(), |b| String::from_utf8_lossy(&b).into_owned()))
        .collect();
    Ok(vals
        .chunks(2)
        .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
        .collect())
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
    p.iter()
        .find(|(n, _)| n == k)
        .map_or("", |(_, v)| v.as_str())
}

fn human(n: u64) -> String {
    shardgate::rebalance::human_bytes(n)
}

/// Shows a progress bar until the rebalance ends; Ctrl-C detaches.
async fn follow(mut source: Source<'_>) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    // Ctrl-C's handler is installed before the first bar is printed: a
    // SIGINT that came before the first wait below used to find none yet
    // and end the process (`ctrl_c()` installs it only when first polled).
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    loop {
        let p = source.progress().await?;
        let num = |k: &str| get(&p, k).parse::<u64>().unwrap_or(0);
        let (done, total) = (num("slots_done"), num("slots_total"));
        let moved = num("keys_moved") + num("keys_moved_on_touch");
        let eta = match get(&p, "eta_secs") {
            "-1" | "" => "?".to_owned(),
            s => format!("{s}s"),
        };
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width) as usize;
        let line = format!(
            "[{}{}] {done}/{total} slots  {moved} keys  {}  {} keys/s  ETA {eta}{}",
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            human(num("bytes_moved")),
            get(&p, "keys_per_sec"),
            if get(&p, "paused") == "1" {
                "  (paused)"
            } else {
                ""
            },
        );
        let state = get(&p, "state").to_owned();
        if tty {
            print!("\r{line}\x1b[K");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(2) || state != "moving" {
            println!("{line}");
            last_line = std::time::Instant::now();
        }
        match state.as_str() {
            "done" => {
                println!(
                    "\nrebalance done in {}s: verification {} (keys per shard: {})",
                    get(&p, "elapsed_secs"),
                    get(&p, "verify"),
                    get(&p, "verify_keys")
                );
                return Ok(());
            }
            "failed" => {
                println!();
                return Err(CliError::Failed(get(&p, "failure").to_owned()));
            }
            "none" => return Err(CliError::NoRebalance),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            Some(()) = async {
                match interrupt.as_mut() {
                    Some(i) => i.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                println!("\ndetached: the rebalance goes on in the proxy; follow it with `shardgate admin status`");
                return Ok(());
            }
        }
    }
}
