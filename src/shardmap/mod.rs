//! stub
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct ShardMap {
    pub slots: u32,
    pub regions: Vec<Region>,
    pub shards: Vec<Shard>,
    pub placement: Vec<PlacementRule>,
    pub default_placement: DefaultPlacement,
    pub read_policy: ReadPolicy,
    pub options: Options,
}
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub zones: Vec<String>,
}
#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    pub region: String,
    pub zone: Option<String>,
    pub weight: u32,
    pub primary: Endpoint,
    pub replicas: Vec<Endpoint>,
}
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: String,
    pub region: String,
    pub zone: Option<String>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    Primary,
    PreferReplica,
    Nearest,
}
#[derive(Debug, Clone)]
pub struct PlacementRule {
    pub matcher: Matcher,
    pub region: String,
}
#[derive(Debug, Clone)]
pub enum Matcher {
    HashTagPrefix(Vec<u8>),
    KeyPrefix(Vec<u8>),
}
#[derive(Debug, Clone)]
pub enum DefaultPlacement {
    AllShards,
    Region(String),
}
#[derive(Debug, Clone)]
pub struct Options {
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub connections_per_endpoint: usize,
    pub dedicated_pool_size: usize,
    pub health_check_interval: Duration,
    pub max_replica_lag: Duration,
    pub allow_flush: bool,
}
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MapError {
    pub path: String,
    pub reason: String,
}
impl ShardMap {
    pub fn from_yaml(_text: &str) -> Result<ShardMap, MapError> {
        todo!()
    }
    pub fn load(_path: &std::path::Path) -> Result<ShardMap, MapError> {
        todo!()
    }
}
