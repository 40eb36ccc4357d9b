//! Dedicated backend connections for commands that hold connection state
//! (MULTI/EXEC with WATCH, blocking pops, scripts), pooled per endpoint with
//! deadpool.
//!
//! A connection goes back to the pool only when it is clean: no reply left
//! unread and no WATCH left active. Anything else (a client that hung up while
//! blocked in BLPOP, say) is closed the moment its [`PooledConn`] is dropped,
//! so that Redis drops the blocked client at once: left in the pool, the
//! backend would still hold a blocked `BLPOP` whose reply nobody reads, and
//! the next `RPUSH` would hand its element to that ghost (deadpool only
//! recycles an object on the *next* checkout, which may never come).
//!
//! A clean connection taken from the pool is probed without a round trip
//! (one non-blocking read): if the backend closed it meanwhile (a restart),
//! it is discarded and another one is made, instead of failing the client's
//! next transaction with `connection lost`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use deadpool::Runtime;
use deadpool::managed::{self, Manager, Metrics as PoolMetrics, RecycleError, RecycleResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::acl::BackendAcl;
use super::breaker::Admit;
use super::connect::connect_wire;
use super::fence::Fence;
use super::{EndpointState, Wire};
use crate::error::BackendError;
use crate::protocol::scan;
use crate::tls::BackendStream;

/// One dedicated connection.
pub struct DedicatedConn {
    stream: BackendStream,
    buf: BytesMut,
    addr: String,
    metrics: crate::metrics::EndpointMetrics,
    /// Replies still expected; non-zero means the connection is mid-request.
    unread: usize,
    /// A WATCH (or other session state) is active on the backend.
    pub stateful: bool,
    /// The backend's `CLIENT ID` of this connection (asked once, when it
    /// is made): `CLIENT UNBLOCK` of a proxy client blocked here is sent to
    /// the shard for it. `None` if the shard did not say.
    backend_id: Option<i64>,
    /// This proxy's fleet lease fence, checked before every write (see
    /// [`DedicatedConn::send`]).
    lease_fence: Arc<Fence>,
}

impl DedicatedConn {
    /// The endpoint this connection goes to (for error messages).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The backend's id of this connection (see `backend_id`).
    pub fn backend_id(&self) -> Option<i64> {
        self.backend_id
    }

    /// Writes one or more complete request frames. Not while this proxy's
    /// fleet lease fence is closed ([`BackendError::Fenced`], nothing
    /// written: the frames were routed before it closed, and the fleet may
    /// have moved their keys since); a write the socket takes in parts
    /// stops between two parts if the fence closed meanwhile (the
    /// connection is then left mid-request, and closed when dropped).
    pub async fn send(&mut self, frames: &[u8], replies: usize) -> Result<(), BackendError> {
        if self.lease_fence.blocks_now() {
            return Err(BackendError::Fenced {
                addr: self.addr.clone(),
            });
        }
        self.unread += replies;
        let lost = |reason: String| BackendError::ConnectionLost {
            addr: self.addr.clone(),
            reason,
        };
        let mut at = 0;
        while at < frames.len() {
            if at > 0 && self.lease_fence.blocks_now() {
                return Err(lost(
                    "this proxy's fleet lease fence closed mid-write".to_owned(),
                ));
            }
            match self.stream.write(&frames[at..]).await {
                Ok(0) => return Err(lost("write failed: the socket took no bytes".to_owned())),
                Ok(n) => at += n,
                Err(e) => return Err(lost(format!("write failed: {e}"))),
            }
        }
        self.stream
            .flush()
            .await
            .map_err(|e| lost(format!("write failed: {e}")))
    }

    /// Reads the next reply frame.
    pub async fn recv(&mut self) -> Result<Bytes, BackendError> {
        loop {
            match scan::frame_len(&self.buf) {
                Ok(Some(n)) => {
                    self.unread = self.unread.saturating_sub(1);
                    return Ok(self.buf.split_to(n).freeze());
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(BackendError::Protocol {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    });
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(BackendError::ConnectionLost {
                        addr: self.addr.clone(),
                        reason: "backend closed the connection".to_owned(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(BackendError::ConnectionLost {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Sends one request and reads its reply.
    pub async fn request(&mut self, frame: &[u8]) -> Result<Bytes, BackendError> {
        self.send(frame, 1).await?;
        self.recv().await
    }

    /// Whether the connection can be handed to another client.
    fn is_clean(&self) -> bool {
        self.unread == 0 && !self.stateful && self.buf.is_empty()
    }

    /// Whether an idle connection still looks usable: a single non-blocking
    /// read must find nothing to read. End of stream (the backend restarted
    /// or closed an idle client), an error, or bytes nobody asked for all
    /// mean it must not be handed out.
    fn is_alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }
}

/// A dedicated connection on loan from its pool.
///
/// Dropping it returns the connection to the pool only when it is clean
/// ([`DedicatedConn::is_clean`]); otherwise the socket is closed right away
/// (see the module doc: a blocked command must not outlive its client).
pub struct PooledConn {
    inner: Option<managed::Object<DedicatedManager>>,
}

impl std::ops::Deref for PooledConn {
    type Target = DedicatedConn;
    fn deref(&self) -> &DedicatedConn {
        // Only `drop` empties `inner`.
        self.inner
            .as_deref()
            .unwrap_or_else(|| unreachable!("lease used after drop"))
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut DedicatedConn {
        self.inner
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("lease used after drop"))
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(obj) = self.inner.take()
            && !obj.is_clean()
        {
            tracing::debug!(endpoint = %obj.addr, unread = obj.unread, "closing a dedicated connection left mid-request or with session state");
            let metrics = obj.metrics.clone();
            // Detached from the pool and dropped: the socket closes now.
            drop(managed::Object::take(obj));
            metrics.dedicated_closed("abandoned");
        }
    }
}

/// deadpool manager creating dedicated connections to one endpoint.
pub struct DedicatedManager {
    endpoint: Arc<EndpointState>,
    /// Protocol and database of every connection of the pool.
    wire: Wire,
    /// For a pool of a backend ACL user (scripts and transactions): the
    /// users and the proxy user whose backend user each connection logs in
    /// as (see [`super::acl`]). `None`: the shard map's credentials.
    user: Option<(Arc<BackendAcl>, String)>,
}

impl Manager for DedicatedManager {
    type Type = DedicatedConn;
    type Error = BackendError;

    async fn create(&self) -> Result<DedicatedConn, BackendError> {
        let ep = &self.endpoint;
        if ep.breaker.admit() == Admit::No {
            return Err(ep.breaker.refusal(&ep.addr));
        }
        let result = connect_wire(&ep.addr, &ep.link, self.wire, ep.options.connect_timeout).await;
        ep.metrics.connect_attempt(result.is_ok());
        let stream = match result {
            Ok(s) => s,
            // The shard is up; it has fewer databases.
            Err(e @ BackendError::NoSuchDb { .. }) => return Err(e),
            Err(e) => {
                ep.breaker.failure(&e, &ep.addr, &ep.metrics);
                return Err(e);
            }
        };
        ep.breaker.success(&ep.addr, &ep.metrics);
        let mut conn = DedicatedConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            addr: ep.addr.clone(),
            metrics: ep.metrics.clone(),
            unread: 0,
            stateful: false,
            backend_id: None,
            lease_fence: ep.lease_fence.clone(),
        };
        // Before any login as a backend ACL user, which may not run CLIENT.
        let id = tokio::time::timeout(
            ep.options.connect_timeout,
            conn.request(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n"),
        )
        .await;
        conn.backend_id = match id {
            Ok(Ok(frame)) => crate::protocol::reply::integer(&frame),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(BackendError::Timeout {
                    addr: ep.addr.clone(),
                    millis: ep.options.connect_timeout.as_millis() as u64,
                });
            }
        };
        if let Some((acl, proxy_user)) = &self.user {
            let user = acl.user(proxy_user).ok_or_else(|| BackendError::Acl {
                addr: ep.addr.clone(),
                user: format!("{}{proxy_user}", super::acl::USER_PREFIX),
                reason: "no backend user is defined for this proxy user".to_owned(),
            })?;
            // Still logged in with the map's credentials on failure: the
            // connection is dropped here, never handed out.
            super::acl::log_in(&mut conn, ep, &user).await?;
        }
        ep.metrics.connections_delta(1.0);
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut DedicatedConn,
        _: &PoolMetrics,
    ) -> RecycleResult<BackendError> {
        if !conn.is_clean() {
            Err(RecycleError::message(
                "connection left mid-request or with session state",
            ))
        } else if !conn.is_alive() {
            self.endpoint.metrics.dedicated_closed("stale");
            tracing::debug!(endpoint = %conn.addr, "discarded a pooled dedicated connection the backend had closed");
            Err(RecycleError::message("closed by the backend while idle"))
        } else {
            Ok(())
        }
    }

    fn detach(&self, _conn: &mut DedicatedConn) {
        self.endpoint.metrics.connections_delta(-1.0);
    }
}

/// The pool type of dedicated connections.
pub type DedicatedPool = managed::Pool<DedicatedManager>;

/// Takes a connection from `pool` (a new one if every pooled one is busy or
/// was found closed).
pub async fn checkout(
    pool: &DedicatedPool,
) -> Result<PooledConn, managed::PoolError<BackendError>> {
    Ok(PooledConn {
        inner: Some(pool.get().await?),
    })
}

/// Builds the pool for one endpoint and protocol version.
pub fn pool(endpoint: Arc<EndpointState>, wire: Wire) -> DedicatedPool {
    build(DedicatedManager {
        endpoint,
        wire,
        user: None,
    })
}

/// Builds the pool of connections logged in as the backend ACL user of
/// `proxy_user` (see [`super::acl`]).
pub fn user_pool(
    endpoint: Arc<EndpointState>,
    wire: Wire,
    acl: Arc<BackendAcl>,
    proxy_user: String,
) -> DedicatedPool {
    build(DedicatedManager {
        endpoint,
        wire,
        user: Some((acl, proxy_user)),
    })
}

fn build(manager: DedicatedManager) -> DedicatedPool {
    let opts = manager.endpoint.options.clone();
    // deadpool needs the runtime set before any timeout is configured.
    managed::Pool::builder(manager)
        .runtime(Runtime::Tokio1)
        .max_size(opts.dedicated_pool_size.max(1))
        .wait_timeout(Some(opts.command_timeout))
        .create_timeout(Some(opts.connect_timeout))
        .build()
        .unwrap_or_else(|e| unreachable!("runtime and timeouts are set: {e}"))
}
