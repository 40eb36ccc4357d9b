//! stub
use crate::shardmap::ShardMap;
use std::sync::Arc;
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(pub u64);
pub fn hash_tag(key: &[u8]) -> &[u8] {
    key
}
pub fn key_hash(_key: &[u8]) -> u64 {
    0
}
pub struct RoutingTable {
    map: Arc<ShardMap>,
}
impl RoutingTable {
    pub fn compile(map: Arc<ShardMap>, _epoch: Epoch) -> RoutingTable {
        RoutingTable { map }
    }
    pub fn epoch(&self) -> Epoch {
        todo!()
    }
    pub fn map(&self) -> &Arc<ShardMap> {
        &self.map
    }
    pub fn slot_of(&self, _key: &[u8]) -> Slot {
        todo!()
    }
    pub fn shard_for_key(&self, _key: &[u8]) -> ShardId {
        todo!()
    }
    pub fn shard_count(&self) -> usize {
        todo!()
    }
}
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("stale")]
    StaleEpoch { current: Epoch, offered: Epoch },
}
pub struct Router {
    t: arc_swap::ArcSwap<RoutingTable>,
}
impl Router {
    pub fn new(table: RoutingTable) -> Router {
        Router {
            t: arc_swap::ArcSwap::from_pointee(table),
        }
    }
    pub fn load(&self) -> Arc<RoutingTable> {
        self.t.load_full()
    }
    pub fn publish(&self, _table: RoutingTable) -> Result<(), RouterError> {
        todo!()
    }
}
