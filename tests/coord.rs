//! The fleet state in a real etcd: a write whose reply was lost is not
//! applied twice when it is retried; key claims have one holder and go
//! with their lease, and a member's key fence holds only under its claim's
//! lease.

mod common;

use common::etcd::Etcd;
use shardgate::coord::{Coord, CoordError, FleetState, RebalanceState, Refusal};

/// A REBALANCE's change: refused while one is recorded.
fn start_rebalance(s: &mut FleetState) -> Result<(), Refusal> {
    Refusal::if_rebalancing(s)?;
    s.rebalance = Some(RebalanceState {
        target_yaml: "next".into(),
        ..RebalanceState::default()
    });
    Ok(())
}

#[test]
fn a_retried_write_finds_itself_instead_of_applying_twice() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = Coord::connect(&[etcd.url()], "retry").await.unwrap();
        coord
            .create_state(&FleetState {
                map_yaml: "m".into(),
                ..FleetState::default()
            })
            .await
            .unwrap();
        let first = coord.update_state_as(7, start_rebalance).await.unwrap();
        // The same write again, as after a reply lost on the way back: it
        // finds itself, even after other writes, and changes nothing.
        let other = coord
            .update_state_as(8, |s| {
                s.map_yaml = "m2".into();
                Ok(())
            })
            .await
            .unwrap();
        assert!(other > first);
        let again = coord.update_state_as(7, start_rebalance).await.unwrap();
        assert_eq!(again, other, "no new revision");
        // A different REBALANCE is refused, as it must be.
        let refused = coord.update_state_as(9, start_rebalance).await;
        assert!(
            matches!(
                refused,
                Err(CoordError::Refused(Refusal::RebalanceRunning { .. }))
            ),
            "{refused:?}"
        );
        // Random ids: two calls of update_state are two writes.
        let a = coord
            .update_state(|s| {
                s.map_yaml.push('a');
                Ok(())
            })
            .await
            .unwrap();
        let b = coord
            .update_state(|s| {
                s.map_yaml.push('b');
                Ok(())
            })
            .await
            .unwrap();
        assert!(b > a);
        let state = coord.state().await.unwrap().unwrap().value;
        assert_eq!(state.map_yaml, "m2ab");
        assert!(state.writes.len() <= 16 && state.writes.contains(&8));
    });
}

/// Key claims (see `backend::fence`): one token at a time; the same token
/// again (a retry after a lost reply) finds itself; a release by another
/// token changes nothing; a claim goes with its lease.
#[test]
fn a_key_claim_has_one_holder_and_goes_with_its_lease() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = Coord::connect(&[etcd.url()], "claims").await.unwrap();
        let mut client = coord.client();
        let a = client.lease_grant(60, None).await.unwrap().id();
        let b = client.lease_grant(60, None).await.unwrap().id();
        assert!(coord.try_claim("k1", "a/1", a).await.unwrap());
        assert!(!coord.try_claim("k1", "b/1", b).await.unwrap(), "held by a");
        assert!(coord.try_claim("k1", "a/1", a).await.unwrap(), "a retry");
        // Another key is free.
        assert!(coord.try_claim("k2", "b/2", b).await.unwrap());
        // Only the holder's token releases it.
        coord.release_claim("k1", "b/1").await.unwrap();
        assert!(!coord.try_claim("k1", "b/1", b).await.unwrap());
        coord.release_claim("k1", "a/1").await.unwrap();
        assert!(coord.try_claim("k1", "b/1", b).await.unwrap());
        // b's lease ends (a proxy that died): its claims are free.
        client.lease_revoke(b).await.unwrap();
        assert!(coord.try_claim("k1", "a/3", a).await.unwrap());
        assert!(coord.try_claim("k2", "a/4", a).await.unwrap());
    });
}

/// A fleet member's key fence (see `backend::fence`): it takes the key's
/// claim in etcd, so a fence on another member waits until it is lifted;
/// the fence counts as held only under the lease its claim was taken under
/// and while this member's lease fence is open.
#[test]
fn a_fleet_fence_is_held_only_under_its_claims_lease() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use shardgate::backend::fence::{Fence, FleetClaims, KeyFences};
    use shardgate::metrics::Metrics;

    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = Coord::connect(&[etcd.url()], "fences").await.unwrap();
        let member = |lease: i64| {
            let fence = Arc::new(Fence::default());
            fence.open_until(Instant::now() + Duration::from_secs(60));
            let (tx, rx) = tokio::sync::watch::channel(lease);
            let fences = Arc::new(KeyFences::default());
            fences.join_fleet(FleetClaims::new(
                coord.clone(),
                format!("m{lease:x}"),
                rx,
                fence.clone(),
                Arc::new(Metrics::new()),
            ));
            (fences, fence, tx)
        };
        let mut client = coord.client();
        let la = client.lease_grant(60, None).await.unwrap().id();
        let lb = client.lease_grant(60, None).await.unwrap().id();
        let (a, a_fence, a_lease) = member(la);
        let (b, _, _) = member(lb);
        let key = Bytes::from_static(b"{t}k");
        assert!(!a.still_held(&key), "not fenced yet");
        a.fence(&key).await.unwrap();
        assert!(a.still_held(&key));
        // Another member's fence on the key waits for a's claim.
        let waiting = {
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move { b.fence(&key).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "b copies while a holds the key");
        // A new lease (after a lost one): a's claim is not its any more.
        a_lease.send_replace(lb);
        assert!(!a.still_held(&key));
        a_lease.send_replace(la);
        assert!(a.still_held(&key));
        // Past the lease fence's deadline: not held either.
        a_fence.close();
        assert!(!a.still_held(&key));
        a.lift(&key);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("b's fence follows a's lift")
            .unwrap()
            .unwrap();
        assert!(b.still_held(&key));
        b.lift(&key);
    });
}
