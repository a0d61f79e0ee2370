//! `--auth-mode passthrough`: the cluster checks a client's `AUTH` (or `HELLO ... AUTH`), and
//! the client's commands then run on its worker's links for that user.
//!
//! Owns: sending the check (the client's own AUTH, or one made from HELLO's, to a master on a
//! connection of its own), holding the client's next commands until the answer is in (they
//! must run as the new user), and switching the session's [`UserId`] on `+OK`.
//! Must not: check a password itself, or keep a password anywhere but the worker's user table
//! (never in logs, metrics, the slow log or CLIENT LIST).

use bytes::{Bytes, BytesMut};

use super::queue::{tag, Entry, Flight, Via};
use super::Session;
use crate::command::Args;
use crate::error::ProxyError;
use crate::resp::write::{self, Proto};
use crate::router::Target;
use crate::upstream::connect::Credentials;
use crate::worker::UserId;

/// An AUTH on its way to the cluster: nothing more is read from the client until it is back.
pub(super) struct AuthWait {
    pub tag: u64,
    creds: Credentials,
    /// A HELLO that authenticates: the protocol and name it sets once the cluster said yes.
    hello: Option<(Proto, Option<Option<Bytes>>)>,
}

impl Session {
    pub(super) fn passthrough(&self) -> bool {
        self.shared.config.auth_mode == "passthrough"
    }

    /// `AUTH [user] pass` in passthrough mode: the client's own frame goes to a master.
    pub(super) fn auth_passthrough(&mut self, args: Args<'_>) {
        let (user, pass) = match args.len() {
            2 => (&b"default"[..], args.get(1).unwrap_or_default()),
            3 => (
                args.get(1).unwrap_or_default(),
                args.get(2).unwrap_or_default(),
            ),
            _ => return self.reply_local(|o, _| write::error(o, "ERR syntax error")),
        };
        let frame = Bytes::copy_from_slice(args.frame);
        self.check_with_cluster(frame, user, pass, None);
    }

    /// `HELLO proto AUTH user pass [SETNAME name]` in passthrough mode.
    pub(super) fn hello_passthrough(
        &mut self,
        user: &[u8],
        pass: &[u8],
        proto: Proto,
        name: Option<Option<Bytes>>,
    ) {
        let mut frame = BytesMut::new();
        write::command(&mut frame, [&b"AUTH"[..], user, pass]);
        self.check_with_cluster(frame.freeze(), user, pass, Some((proto, name)));
    }

    fn check_with_cluster(
        &mut self,
        frame: Bytes,
        user: &[u8],
        pass: &[u8],
        hello: Option<(Proto, Option<Option<Bytes>>)>,
    ) {
        let (Ok(user), Ok(pass)) = (std::str::from_utf8(user), std::str::from_utf8(pass)) else {
            return self.reply_error(ProxyError::redis(
                "ERR slotmux: with --auth-mode passthrough, user names and passwords must be UTF-8",
            ));
        };
        let creds = Credentials {
            user: Some(user.to_string()),
            password: Some(pass.to_string()),
        };
        // Its own connection: AUTH on a shared one would change who every client there is.
        let f = Flight::new(frame, Target::AnyMaster, false).via(Via::Fresh);
        let n = self.push(Entry::One(f));
        let t = tag(n, 0);
        self.auth_wait = Some(Box::new(AuthWait {
            tag: t,
            creds,
            hello,
        }));
        let now = self.now;
        self.send(t, now);
    }

    /// The cluster's answer to the AUTH of `tag`: on `+OK` the session is now that user; the
    /// reply the client gets (HELLO's map for a HELLO).
    pub(super) fn auth_answered(&mut self, tag: u64, frame: Bytes) -> Bytes {
        let Some(wait) = self.auth_wait.take_if(|w| w.tag == tag) else {
            return frame;
        };
        if frame.first() != Some(&b'+') {
            return frame;
        }
        match self.worker.join_user(wait.creds) {
            Ok(user) => self.become_user(user),
            Err(limit) => {
                return ProxyError::redis(format!(
                    "ERR slotmux: too many users with connections of their own (--max-backend-users {limit}); try again later"
                ))
                .frame()
            }
        }
        let Some((proto, name)) = wait.hello else {
            return frame;
        };
        self.hello_done(proto, name)
    }

    /// Moves the session to `user`'s links (0: the default identity).
    pub(super) fn become_user(&mut self, user: UserId) {
        if self.user != 0 {
            self.worker.leave_user(self.user);
        }
        let changed = self.user != user;
        self.user = user;
        if changed {
            self.publish_view();
            self.tracking_user_changed();
        }
    }

    /// Whether reading must wait for an AUTH's answer.
    #[inline]
    pub(super) fn auth_pending(&self) -> bool {
        self.auth_wait.is_some()
    }
}
