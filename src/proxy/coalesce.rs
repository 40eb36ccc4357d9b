//! The client side of coalesced reads (`options.coalesce_reads`): which
//! reads may share a backend request, and with which ones. The sharing
//! itself is [`crate::backend::coalesce`].

use bytes::{Bytes, BytesMut};

use super::session::Session;
use crate::backend::Endpoint;
use crate::backend::mux::ReplyRx;
use crate::command::CommandSpec;
use crate::snapshot::Snapshot;

impl Session {
    /// Sends a read (`frame`, one complete request) to `ep`, the endpoint
    /// the read policy chose: shared with an identical read in flight
    /// when the map coalesces reads, the command's reply may be shared,
    /// and this client's own requests allow it ([`Session::may_join`]).
    pub(super) fn send_read(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        ep: &Endpoint,
        frame: &Bytes,
    ) -> ReplyRx {
        if !coalesces(snap, spec) {
            return ep.send(self.wire(), self.id, frame);
        }
        // A replica read of a client that wrote was let through by its
        // position (read-your-writes) as of the replica's last probe: a
        // request to it sent before that may predate the write there.
        let join = if ep.state.role == crate::backend::Role::Replica
            && self.writes.state() != super::session::WriteState::None
        {
            crate::backend::coalesce::MayJoin::No
        } else {
            self.may_join()
        };
        ep.read_coalesced(self.wire(), self.id, frame, self.request_started, join)
            .0
    }

    /// [`Session::send_read`] of a request that `encode` appends (a part
    /// of a split read): encoded straight into the connection's outgoing
    /// bytes unless it may be shared (it is then a frame of its own, the
    /// key of the flight).
    pub(super) fn send_read_encoded(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        ep: &Endpoint,
        encode: impl FnOnce(&mut BytesMut),
    ) -> ReplyRx {
        if !coalesces(snap, spec) {
            return ep.send_encoded(self.wire(), self.id, encode);
        }
        let mut frame = BytesMut::new();
        encode(&mut frame);
        self.send_read(snap, spec, ep, &frame.freeze())
    }
}

/// Whether reads of `spec` may share backend requests under `snap`'s map.
fn coalesces(snap: &Snapshot, spec: &CommandSpec) -> bool {
    snap.map().options.coalesce_reads && spec.reply_is_shareable()
}
