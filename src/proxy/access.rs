//! Who may run what: the NOAUTH / NOPERM checks every command passes before
//! it is dispatched, and logging in (AUTH, HELLO ... AUTH).

use std::borrow::Cow;

use bytes::Bytes;

use super::Proxy;
use super::session::Session;
use crate::auth::{self, Auth};
use crate::command::{CommandSpec, Flags, subcommand};
use crate::error::ProxyError;
use crate::protocol::Request;

/// The reply to a login from an address with too many recent failures.
pub(super) const TOO_MANY_FAILURES: &str =
    "ERR too many failed logins from this address; try again later";

impl Session {
    /// NOAUTH before login (except for the `no_auth` commands AUTH, HELLO,
    /// QUIT, RESET), NOPERM for a command outside the user's rules.
    pub(super) fn check_access(
        &self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: &Request,
    ) -> Result<(), ProxyError> {
        let Some(user) = self.user.as_deref() else {
            if spec.flags.contains(Flags::NO_AUTH) {
                return Ok(());
            }
            proxy.metrics.auth_failure("noauth");
            return Err(ProxyError::Client(Cow::Borrowed(auth::NOAUTH)));
        };
        let sub = req.args().get(1).and_then(|a| subcommand(spec, a));
        user.may_run(spec, sub).map_err(|fullname| {
            proxy.metrics.auth_failure("noperm");
            tracing::debug!(client = self.id, peer = %self.addr, user = %user.name, command = fullname, "command refused: no permission");
            ProxyError::Client(Cow::Owned(auth::noperm(fullname)))
        })
    }

    /// Logs in as `user` with `password`; WRONGPASS when they do not match.
    pub(super) fn log_in(
        &mut self,
        proxy: &Proxy,
        auth: &Auth,
        user: &Bytes,
        password: &Bytes,
    ) -> Result<(), ProxyError> {
        if let Some(ip) = self.peer_ip
            && proxy.login_blocked(ip)
        {
            // The password is not even checked: guessing gains nothing.
            proxy.metrics.auth_failure("wrongpass");
            self.auth_failures += 1;
            return Err(ProxyError::Client(Cow::Borrowed(TOO_MANY_FAILURES)));
        }
        match auth.authenticate(user, password) {
            Some(u) => {
                tracing::debug!(client = self.id, peer = %self.addr, user = %u.name, "client authenticated");
                self.user = Some(u);
                if !self.logged_in_once {
                    self.logged_in_once = true;
                    proxy.client_logged_in();
                }
                Ok(())
            }
            None => {
                proxy.metrics.auth_failure("wrongpass");
                self.auth_failures += 1;
                // Rate-limited per peer: a guessing run leaves a few lines.
                // The user name is what the client sent; never the password.
                if let Some(failures) = self.peer_ip.and_then(|ip| proxy.login_failed(ip)) {
                    tracing::info!(client = self.id, peer = %self.addr, user = %String::from_utf8_lossy(user), failures_from_peer = failures, "authentication failed: invalid username-password pair");
                }
                Err(ProxyError::Client(Cow::Borrowed(auth::WRONGPASS)))
            }
        }
    }
}
