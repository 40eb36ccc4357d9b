//! `shardgate admin apply`, `shardgate admin fleet` and `shardgate admin
//! pause|resume|throttle --etcd`: a fleet's control state, read and
//! written straight in etcd (no proxy needs to answer).

use std::path::Path;
use std::process::ExitCode;

use shardgate::coord::{Coord, CoordError, FleetState};
use shardgate::shardmap::{MapError, ShardMap};

/// Why `admin apply` or `admin fleet` failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("the fleet's current map: {0}")]
    CurrentMap(MapError),
    #[error(
        "{field}: {reason} (a placement change moves keys: submit it with `shardgate admin rebalance`)"
    )]
    Placement { field: String, reason: String },
}

/// Stores the map of `path` in the fleet (see `AdminCommand::Apply`).
pub fn apply(path: &Path, endpoints: &[String], cluster: &str) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return fail(&format!(
                "{}: cannot read the map file: {e}",
                path.display()
            ));
        }
    };
    let next = match ShardMap::from_yaml(&text) {
        Ok(m) => m,
        Err(e) => return fail(&format!("{}: {e}", path.display())),
    };
    run(async {
        let coord = Coord::connect(endpoints, cluster).await?;
        let Some(current) = coord.state().await? else {
            let state = coord
                .create_state(&FleetState {
                    map_yaml: text.clone(),
                    rebalance: None,
                    last: None,
                    writes: Vec::new(),
                })
                .await?;
            return Ok(format!(
                "OK stored the first map of cluster {cluster} (epoch {})",
                state.revision
            ));
        };
        let running = ShardMap::from_yaml(&current.value.map_yaml).map_err(CliError::CurrentMap)?;
        shardgate::control::reload_check(&running, next)
            .map_err(|(field, reason)| CliError::Placement { field, reason })?;
        let revision = coord
            .update_state(|s| {
                shardgate::coord::Refusal::if_rebalancing(s)?;
                s.map_yaml = text.clone();
                Ok(())
            })
            .await?;
        Ok(format!(
            "OK the fleet serves the map at epoch {revision} once every proxy has applied it"
        ))
    })
}

/// A control of the running rebalance.
pub enum Control {
    Pause,
    Resume,
    /// Keys per second (0: no limit).
    Throttle(u64),
}

/// Records `control` in the fleet's rebalance state; the mover's proxy
/// applies it when it sees the state (at once, by its watch).
pub fn control(endpoints: &[String], cluster: &str, control: Control) -> ExitCode {
    run(async {
        let coord = Coord::connect(endpoints, cluster).await?;
        let revision = coord
            .control_rebalance(|r| match control {
                Control::Pause => r.paused = true,
                Control::Resume => r.paused = false,
                Control::Throttle(n) => r.throttle = n,
            })
            .await?;
        let what = match control {
            Control::Pause => "paused".to_owned(),
            Control::Resume => "resumed".to_owned(),
            Control::Throttle(0) => "unthrottled".to_owned(),
            Control::Throttle(n) => format!("throttled to {n} keys/s"),
        };
        Ok(format!(
            "OK the fleet's rebalance is {what} (fleet revision {revision}); the mover's proxy applies it when it sees the state"
        ))
    })
}

/// Prints the fleet (see `AdminCommand::Fleet`).
pub fn status(endpoints: &[String], cluster: &str) -> ExitCode {
    run(async {
        let coord = Coord::connect(endpoints, cluster).await?;
        let state = coord.state().await?;
        let members = coord.members().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut out = format!("cluster: {cluster}\n");
        match &state {
            None => out.push_str("map: none (start a proxy with --map or run `admin apply`)\n"),
            Some(s) => {
                out.push_str(&format!("epoch: {}\n", s.revision));
                match &s.value.rebalance {
                    None => out.push_str("rebalance: none\n"),
                    Some(r) => out.push_str(&format!(
                        "rebalance: running ({} pairs migrating or done, {} done{}{})\n",
                        r.migrating.len(),
                        r.done.len(),
                        if r.paused { ", paused" } else { "" },
                        if r.throttle > 0 {
                            format!(", throttle {} keys/s", r.throttle)
                        } else {
                            String::new()
                        }
                    )),
                }
            }
        }
        out.push_str(&format!("proxies: {}\n", members.len()));
        for m in members {
            out.push_str(&format!(
                "  {}  addr {}  epoch {}  renewed {} ms ago\n",
                m.id,
                m.addr,
                m.acked,
                now.saturating_sub(m.renewed_unix_ms)
            ));
        }
        Ok(out.trim_end().to_owned())
    })
}

fn run(work: impl std::future::Future<Output = Result<String, CliError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(work) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}
