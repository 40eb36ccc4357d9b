use std::sync::Arc;

use super::*;
use crate::backend::Backends;
use crate::metrics::Metrics;
use crate::router::{Epoch, RoutingTable};
use crate::shardmap::ShardMap;
use crate::snapshot::{Published, Snapshot};
use crate::tls::MaybeTls;

/// Most of an idle client's memory is its task, and the task is this
/// future: rare paths (exclusive operations) are boxed so that it stays
/// small. Unboxed, it was 8.3 KiB in a release build.
#[tokio::test]
async fn an_idle_client_task_stays_small() {
    let map = Arc::new(
        ShardMap::from_yaml(
            "regions:\n  - name: r\nshards:\n  - name: s\n    region: r\n    primary: 127.0.0.1:1\n",
        )
        .unwrap(),
    );
    let table = Arc::new(RoutingTable::compile(map.clone(), Epoch(1)));
    let backends = Arc::new(Backends::new(&map, None, None));
    let snapshot = Snapshot::new(table, backends).unwrap();
    let ctx = crate::context::Context::new(
        Published::new(snapshot),
        Arc::new(Metrics::new()),
        None,
        None,
    );
    let proxy = Proxy::new(Arc::new(ctx), super::super::ClientConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let task = serve_client(&proxy, MaybeTls::Plain(stream), peer, 1, shutdown);
    let size = std::mem::size_of_val(&task);
    assert!(size <= 4096, "the client task future is {size} bytes");
}
