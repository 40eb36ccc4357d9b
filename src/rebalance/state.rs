//! The state directory (`--state-dir`): what survives a restart.
//!
//! ```text
//! STATE/current.yaml            the map in force after the last rebalance
//! STATE/rebalance/source.yaml   a running rebalance: the map it started from
//! STATE/rebalance/target.yaml   ... the map it moves to
//! STATE/rebalance/log           ... its progress, one fsynced line per step
//! ```
//!
//! Log lines: `migrating c:s ...` is written (and synced) before those
//! (class, slot) pairs enter `Migrating`; `done c:s ...` after their last
//! key moved; `pause`, `resume`, `throttle N`. Files are replaced by
//! write-to-temporary, fsync, rename.

use crate::coord::MovedSoFar;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A running rebalance read back from the state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub source_yaml: String,
    pub target_yaml: String,
    /// (class, slot) pairs that entered `Migrating`.
    pub migrating: HashSet<(u32, u32)>,
    /// (class, slot) pairs whose keys all moved.
    pub done: HashSet<(u32, u32)>,
    pub paused: bool,
    /// Keys per second, 0 for no limit.
    pub throttle: u64,
    /// What the movers had moved when they last recorded a window done.
    pub moved: MovedSoFar,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating it if needed) the state directory.
    pub fn open(root: &Path) -> std::io::Result<StateDir> {
        fs::create_dir_all(root.join("rebalance"))?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// Runs `f` (file writes and fsyncs) on tokio's blocking pool, so a
    /// slow disk never stalls the threads that serve clients.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StateDir) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> PathBuf {
        self.root.join("rebalance")
    }

    /// The map in force after the last finished rebalance, if any.
    pub fn current(&self) -> std::io::Result<Option<String>> {
        read_opt(&self.root.join("current.yaml"))
    }

    /// The rebalance that was running, if any.
    pub fn saved(&self) -> std::io::Result<Option<Saved>> {
        let dir = self.dir();
        let (Some(source_yaml), Some(target_yaml)) = (
            read_opt(&dir.join("source.yaml"))?,
            read_opt(&dir.join("target.yaml"))?,
        ) else {
            return Ok(None);
        };
        let mut saved = Saved {
            source_yaml,
            target_yaml,
            ..Saved::default()
        };
        let log = read_opt(&dir.join("log"))?.unwrap_or_default();
        for line in log.lines() {
            let mut words = line.split_whitespace();
            let verb = words.next().unwrap_or("");
            match verb {
                "migrating" | "done" => {
                    let set = if verb == "done" {
                        &mut saved.done
                    } else {
                        &mut saved.migrating
                    };
                    for w in words {
                        if let Some((c, s)) = w.split_once(':')
                            && let (Ok(c), Ok(s)) = (c.parse(), s.parse())
                        {
                            set.insert((c, s));
                        }
                    }
                }
                "pause" => saved.paused = true,
                "resume" => saved.paused = false,
                "throttle" => {
                    saved.throttle = words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
                }
                "moved" => {
                    let mut n = || words.next().and_then(|n| n.parse().ok());
                    if let (Some(keys), Some(bytes), Some(big_keys)) = (n(), n(), n()) {
                        saved.moved = MovedSoFar {
                            keys,
                            bytes,
                            big_keys,
                        };
                    }
                }
                _ => {} // a torn last line after a crash: ignored
            }
        }
        Ok(Some(saved))
    }

    /// Records a new rebalance (before anything moves).
    pub fn begin(&self, source_yaml: &str, target_yaml: &str) -> std::io::Result<()> {
        let dir = self.dir();
        let _ = fs::remove_file(dir.join("log"));
        write_atomic(&dir.join("source.yaml"), source_yaml)?;
        write_atomic(&dir.join("target.yaml"), target_yaml)?;
        File::create(dir.join("log"))?.sync_all()?;
        sync_dir(&dir)
    }

    /// Appends one line to the log and syncs it.
    pub fn log(&self, line: &str) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir().join("log"))?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data()
    }

    /// Logs (class, slot) pairs under `verb` (`migrating` or `done`).
    pub fn log_units(&self, verb: &str, units: &[(u32, u32)]) -> std::io::Result<()> {
        // Long windows are split over lines so a line stays small.
        for chunk in units.chunks(512) {
            let mut line = String::from(verb);
            for (c, s) in chunk {
                line.push_str(&format!(" {c}:{s}"));
            }
            self.log(&line)?;
        }
        Ok(())
    }

    /// Logs what the movers moved so far (the last such line counts).
    pub fn log_moved(&self, m: MovedSoFar) -> std::io::Result<()> {
        self.log(&format!("moved {} {} {}", m.keys, m.bytes, m.big_keys))
    }

    /// The rebalance finished: its target becomes the map in force and its
    /// files go.
    pub fn finish(&self, target_yaml: &str) -> std::io::Result<()> {
        write_atomic(&self.root.join("current.yaml"), target_yaml)?;
        let dir = self.dir();
        for f in ["log", "source.yaml", "target.yaml"] {
            match fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&dir)
    }
}

fn read_opt(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trips_and_finish_clears() {
        let root = std::env::temp_dir().join(format!("sg-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let st = StateDir::open(&root).unwrap();
        assert_eq!(st.saved().unwrap(), None);
        st.begin("source", "target").unwrap();
        st.log_units("migrating", &[(0, 1), (0, 2), (1, 7)])
            .unwrap();
        st.log_units("done", &[(0, 1)]).unwrap();
        let moved = |keys| MovedSoFar {
            keys,
            bytes: keys * 64,
            big_keys: 1,
        };
        st.log_moved(moved(10)).unwrap();
        st.log_moved(moved(25)).unwrap();
        st.log("throttle 500").unwrap();
        st.log("pause").unwrap();
        // A torn line from a crash mid-write is ignored.
        st.log("moved 99").unwrap();
        st.log("migr").unwrap();
        let s = st.saved().unwrap().unwrap();
        assert_eq!(s.source_yaml, "source");
        assert_eq!(s.migrating.len(), 3);
        assert!(s.done.contains(&(0, 1)));
        assert_eq!((s.paused, s.throttle), (true, 500));
        assert_eq!(s.moved, moved(25), "the last whole `moved` line");
        st.finish("target").unwrap();
        assert_eq!(st.saved().unwrap(), None);
        assert_eq!(st.current().unwrap().as_deref(), Some("target"));
        fs::remove_dir_all(&root).unwrap();
    }
}
