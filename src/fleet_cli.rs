//! `shardgate admin apply` and `shardgate admin fleet`: a fleet's control
//! state, read and written straight in etcd (no proxy needs to run).

use std::path::Path;
use std::process::ExitCode;

use shardgate::coord::{Coord, FleetState};
use shardgate::shardmap::ShardMap;

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
        let coord = Coord::connect(endpoints, cluster)
            .await
            .map_err(|e| e.to_string())?;
        let Some(current) = coord.state().await.map_err(|e| e.to_string())? else {
            let state = coord
                .create_state(&FleetState {
                    map_yaml: text.clone(),
                    rebalance: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            return Ok(format!(
                "OK stored the first map of cluster {cluster} (epoch {})",
                state.revision
            ));
        };
        let running = ShardMap::from_yaml(&current.value.map_yaml)
            .map_err(|e| format!("the fleet's current map: {e}"))?;
        shardgate::control::reload_check(&running, next).map_err(|(field, reason)| {
            format!("{field}: {reason} (a placement change moves keys: submit it with `shardgate admin rebalance`)")
        })?;
        let revision = coord
            .update_state(|s| {
                if s.rebalance.is_some() {
                    return Err(
                        "a rebalance is moving slots; apply the map once it has finished"
                            .to_owned(),
                    );
                }
                s.map_yaml = text.clone();
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "OK the fleet serves the map at epoch {revision} once every proxy has applied it"
        ))
    })
}

/// Prints the fleet (see `AdminCommand::Fleet`).
pub fn status(endpoints: &[String], cluster: &str) -> ExitCode {
    run(async {
        let coord = Coord::connect(endpoints, cluster)
            .await
            .map_err(|e| e.to_string())?;
        let state = coord.state().await.map_err(|e| e.to_string())?;
        let members = coord.members().await.map_err(|e| e.to_string())?;
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

fn run(work: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
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
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}
