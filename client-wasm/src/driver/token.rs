//! The `tokenProvider` option: a page function returning a promise of a fresh JWT, called
//! before every connection of the real socket (this tab's, or the leader tab's when tabs
//! share) and, on a live connection, a little before the current token's `exp` when the
//! session asks ([`Action::RefreshToken`](redistribute_protocol::session::Action)). Each token
//! goes to [`Session::refresh_token`](redistribute_protocol::session::Session::refresh_token)
//! with its lifetime (read from the JWT's `exp`, unverified), which switches the live
//! connection to it without a reconnect.

use std::cell::RefCell;
use std::rc::Weak;
use std::time::Duration;

use js_sys::{Function, Promise};
use redistribute_protocol::session::{token_lifetime, DisconnectReason};
use wasm_bindgen::prelude::*;

use super::{js_error, now, Driver, Inner, Topic};
use crate::errors::ErrorInfo;

/// The page's token provider and the state of its calls.
pub(super) struct Tokens {
    provider: Function,
    /// Counts calls; a result for an older call (one whose connection was closed meanwhile) is
    /// dropped.
    generation: u32,
    /// The driver, for the promise callbacks (set when its callbacks are attached).
    pub(super) weak: Weak<RefCell<Inner>>,
}

/// What a token is for.
#[derive(Clone)]
pub(super) enum Then {
    /// A new connection to this target: open it once the token is there.
    Open(String),
    /// The live connection.
    Refresh,
}

impl Tokens {
    /// Wraps the page's `tokenProvider`.
    pub(super) fn new(provider: Function) -> Tokens {
        Tokens {
            provider,
            generation: 0,
            weak: Weak::new(),
        }
    }

    /// Forgets the call in progress (its connection is gone).
    pub(super) fn cancel(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// How long a token stays valid, by the wall clock.
fn lifetime(token: &str) -> Option<Duration> {
    token_lifetime(
        token,
        Duration::from_millis(js_sys::Date::now().max(0.0) as u64),
    )
}

impl Inner {
    /// Calls the provider for `then`; returns `false` without a provider.
    pub(super) fn fetch_token(&mut self, then: Then) -> bool {
        let Some(tokens) = self.tokens.as_mut() else {
            return false;
        };
        tokens.cancel();
        let generation = tokens.generation;
        let promise = match tokens.provider.call0(&JsValue::UNDEFINED) {
            Ok(value) => Promise::resolve(&value),
            Err(e) => Promise::reject(&e),
        };
        let (weak, then_ok) = (tokens.weak.clone(), then.clone());
        let on_ok = Closure::once_into_js(move |value: JsValue| {
            let token = value
                .as_string()
                .ok_or_else(|| "tokenProvider must resolve to a string".to_owned());
            settle(&weak, generation, then_ok, token);
        });
        let weak = tokens.weak.clone();
        let on_err = Closure::once_into_js(move |error: JsValue| {
            let reason = js_sys::Error::from(error).message();
            settle(
                &weak,
                generation,
                then,
                Err(format!("tokenProvider failed: {reason}")),
            );
        });
        // `then` through Reflect: the typed binding takes closures that must outlive the
        // promise, while these free themselves when called.
        if let Ok(then) = js_sys::Reflect::get(&promise, &"then".into()) {
            let then: Function = then.unchecked_into();
            let _ = then.call2(&promise, &on_ok, &on_err);
        }
        true
    }
}

/// A provider call finished: hands the token to the session (and opens the connection it was
/// for), or reports the failure.
fn settle(weak: &Weak<RefCell<Inner>>, generation: u32, then: Then, token: Result<String, String>) {
    let Some(rc) = weak.upgrade() else { return };
    {
        let mut inner = rc.borrow_mut();
        if inner.tokens.as_ref().map(|t| t.generation) != Some(generation) {
            return;
        }
        let t = now();
        match (then, token) {
            (then, Ok(token)) => {
                let valid_for = lifetime(&token);
                inner.session.refresh_token(t, token, valid_for);
                if let Then::Open(target) = then {
                    inner.open_socket(&target);
                }
            }
            (Then::Open(_), Err(reason)) => {
                let reason = DisconnectReason::transport(None, reason);
                inner.session.handle_transport_closed(t, reason);
            }
            (Then::Refresh, Err(reason)) => {
                // The connection keeps its token until the server ends it at its expiry; the
                // next connection calls the provider again.
                let error = ErrorInfo::new("token_refresh_failed", reason);
                inner.emit(Topic::Error, vec![js_error(&error)]);
            }
        }
    }
    Driver(rc).pump();
}
