//! The offline outbox's sender: publishes queued in the persisted [`Outbox`](crate::outbox)
//! go to the session, and their promises settle.
//!
//! The outbox (shared by the tabs through localStorage) is sent by every client whose session
//! is connected: all entries, oldest first, with their ids as idempotency keys, when the
//! session connects, after each new entry, and a second after a transient failure. Tabs do not
//! coordinate who sends what, because localStorage and BroadcastChannel are not ordered with
//! each other (a tab may not see another's entry yet): two tabs sending the same entry is
//! harmless, the server stores its key once, and since every tab sends the entries in the same
//! (append) order, the first copy of each reaches the server in that order too. A publish
//! promise settles in the tab that made it, by its own send or another tab's `ack`/`nack` over
//! the bus, or, when the tabs do not share a connection (no bus), by the outcome the sending
//! tab recorded in the outbox (see `crate::outbox::Outcome`), read when this tab's session
//! connects.

use js_sys::{Array, Object, Promise};
use redistribute_protocol::session::{PublishOptions, SessionError};
use redistribute_protocol::{json, validate_channel, Fields};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::Topic;
use super::{call, field, post, set, Driver, Inner, Link, Reply, Waiter};
use crate::errors::{ErrorInfo, BAD_REQUEST, CANCELLED, OUTBOX_FULL, QUOTA_EXCEEDED};
use crate::outbox::{Entry, OutboxError, Outcome};
use crate::storage::StorageError;

/// A JS `Error` with a code that came over the bus.
fn remote_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    set(&err, "code", &code.into());
    err.into()
}

impl Inner {
    /// Another tab sent an outbox message (`ack`: stored, `nack`: refused): settles this
    /// tab's promises of it.
    pub(super) fn settle_remote(&mut self, stored: bool, msg: &JsValue) {
        let id = field(msg, "id").unwrap_or_default();
        // Every publish queued with this id (an idempotency key given twice).
        while let Some(i) = self.parcels.iter().position(|(p, _)| *p == id) {
            let (_, w) = self.parcels.swap_remove(i);
            if stored {
                call(
                    &w.resolve,
                    &[field(msg, "offset").unwrap_or_default().into()],
                );
            } else {
                let code = field(msg, "code").unwrap_or_default();
                let text = field(msg, "message").unwrap_or_default();
                call(&w.reject, &[remote_error(&code, &text)]);
            }
        }
        self.emit_outbox_size();
    }

    /// Hands the outbox entries not yet in flight to the session, oldest first, when
    /// connected.
    pub(super) fn flush_outbox(&mut self) {
        if !self.session.is_connected() {
            return;
        }
        let entries = match &self.outbox {
            Some(o) => o.list(),
            None => return,
        };
        self.settle_done(&entries);
        for e in entries {
            if self.inflight.iter().any(|(_, id)| *id == e.id) {
                continue;
            }
            let options = PublishOptions {
                maxlen: e.maxlen,
                idempotency_key: Some(e.id.clone()),
            };
            match self.session.publish(e.channel, e.fields, options) {
                Ok(rid) => self.inflight.push((rid.get(), e.id)),
                Err(SessionError::Backpressure { .. }) => break,
                Err(err) => self.finish(&e.id, Err(ErrorInfo::session(&err))),
            }
        }
    }

    /// Settles this tab's outbox promises whose messages another tab sent or cancelled
    /// without telling it over the bus (tabs that do not share a connection): their
    /// messages no longer wait, and the outbox recorded how they ended.
    fn settle_done(&mut self, waiting: &[Entry]) {
        let Some(o) = &self.outbox else { return };
        let mut done = Vec::new();
        for (id, _) in &self.parcels {
            let gone =
                !waiting.iter().any(|e| e.id == *id) && !self.inflight.iter().any(|(_, e)| e == id);
            if gone && !done.iter().any(|(d, _)| d == id) {
                if let Some(outcome) = o.outcome(id) {
                    done.push((id.clone(), outcome));
                }
            }
        }
        for (id, outcome) in &done {
            while let Some(i) = self.parcels.iter().position(|(p, _)| p == id) {
                let (_, w) = self.parcels.swap_remove(i);
                match outcome {
                    Outcome::Stored(offset) => call(&w.resolve, &[offset.into()]),
                    Outcome::Refused { code, message } => {
                        call(&w.reject, &[remote_error(code, message)])
                    }
                }
            }
        }
        if !done.is_empty() {
            self.emit_outbox_size();
        }
    }

    /// Tries the outbox again in a second (after a transient failure while connected).
    pub(super) fn retry_later(&mut self) {
        if self.retry_armed {
            return;
        }
        if let Some(h) = &self.handlers {
            crate::browser::set_timeout(h.retry.as_ref().unchecked_ref(), 1000);
            self.retry_armed = true;
        }
    }

    /// An outbox entry is done (stored, refused or cancelled): removes it, settles its
    /// promise here or in the tab that made it, and reports the new size.
    pub(super) fn finish(&mut self, id: &str, result: Result<String, ErrorInfo>) {
        if let Some(o) = &self.outbox {
            let outcome = match &result {
                Ok(offset) => Outcome::Stored(offset.clone()),
                Err(e) => Outcome::Refused {
                    code: e.code.to_owned(),
                    message: e.message.clone(),
                },
            };
            o.finish(id, &outcome, js_sys::Date::now());
        }
        if let (Link::Bus(bus), Some(_)) = (&self.link, &self.shared) {
            let (kind, fields): (&str, Vec<(&str, JsValue)>) = match &result {
                Ok(offset) => ("ack", vec![("offset", offset.into())]),
                Err(e) => (
                    "nack",
                    vec![
                        ("code", e.code.into()),
                        ("message", e.message.as_str().into()),
                    ],
                ),
            };
            let mut fields = fields;
            fields.push(("id", id.into()));
            post(&bus.ch, kind, None, &fields);
        }
        // Every publish queued with this id (an idempotency key given twice).
        while let Some(i) = self.parcels.iter().position(|(p, _)| p == id) {
            let (_, w) = self.parcels.swap_remove(i);
            match &result {
                Ok(offset) => call(&w.resolve, &[offset.into()]),
                Err(e) => call(&w.reject, &[super::js_error(e)]),
            }
        }
        self.emit_outbox_size();
    }

    pub(super) fn emit_outbox_size(&mut self) {
        if let Some(o) = &self.outbox {
            let n = o.len() as f64;
            self.emit(Topic::Outbox, vec![n.into()]);
        }
    }

    /// Puts a publish in the outbox; its promise settles when the server stored it.
    fn enqueue(
        &mut self,
        channel: String,
        fields: Fields,
        options: PublishOptions,
        waiter: Waiter,
    ) -> Result<(), ErrorInfo> {
        validate_channel(&channel).map_err(|e| ErrorInfo::session(&SessionError::Invalid(e)))?;
        if fields.is_empty() {
            return Err(ErrorInfo::new(BAD_REQUEST, "fields must not be empty"));
        }
        let id = match options.idempotency_key {
            Some(key) => key,
            None => {
                self.outbox_count += 1;
                format!("ob-{:016x}-{}", self.outbox_seed, self.outbox_count)
            }
        };
        let entry = Entry {
            id: id.clone(),
            channel,
            fields,
            maxlen: options.maxlen,
            created_at: js_sys::Date::now(),
        };
        let Some(outbox) = &self.outbox else {
            return Err(ErrorInfo::new(BAD_REQUEST, "no outbox"));
        };
        let n = outbox.push(entry).map_err(|e| {
            let code = match e {
                OutboxError::Full(_) => OUTBOX_FULL,
                OutboxError::Storage(StorageError::QuotaExceeded) => QUOTA_EXCEEDED,
                OutboxError::Storage(_) => crate::errors::STORAGE_UNAVAILABLE,
            };
            ErrorInfo::new(code, e.to_string())
        })?;
        self.parcels.push((id, waiter));
        self.emit(Topic::Outbox, vec![(n as f64).into()]);
        self.flush_outbox();
        Ok(())
    }
}

impl Driver {
    /// Publishes through the outbox.
    pub(super) fn enqueue(
        &self,
        channel: String,
        fields: Fields,
        options: PublishOptions,
    ) -> Promise {
        let mut slots = None;
        let promise = Promise::new(&mut |resolve, reject| slots = Some((resolve, reject)));
        let (resolve, reject) = slots.expect("the executor runs synchronously");
        let waiter = Waiter {
            resolve,
            reject: reject.clone(),
            reply: Reply::Publish,
        };
        let result = self
            .0
            .borrow_mut()
            .enqueue(channel, fields, options, waiter);
        if let Err(e) = result {
            call(&reject, &[super::js_error(&e)]);
        }
        self.pump();
        promise
    }

    /// The waiting messages: `[{id, channel, fields, createdAt}]`, oldest first.
    pub(crate) fn outbox(&self) -> Array {
        let (entries, decode) = {
            let inner = self.0.borrow();
            let entries = inner.outbox.as_ref().map(|o| o.list()).unwrap_or_default();
            (entries, inner.decode.clone())
        };
        let out = Array::new();
        for e in entries {
            let mut text = String::new();
            json::write_object(&mut text, &e.fields);
            let fields = match &decode {
                Some(f) => f.call1(&JsValue::UNDEFINED, &text.into()),
                None => js_sys::JSON::parse(&text),
            };
            let obj: JsValue = Object::new().into();
            set(&obj, "id", &e.id.into());
            set(&obj, "channel", &e.channel.into());
            set(&obj, "fields", &fields.unwrap_or(JsValue::NULL));
            set(&obj, "createdAt", &e.created_at.into());
            out.push(&obj);
        }
        out
    }

    /// Removes a waiting message unless this client is already sending it; its promise
    /// rejects with `cancelled`. Whether it was removed.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let removed = {
            let mut inner = self.0.borrow_mut();
            let sending = inner.inflight.iter().any(|(_, e)| e == id);
            let present = inner
                .outbox
                .as_ref()
                .is_some_and(|o| o.list().iter().any(|e| e.id == id));
            if sending || !present {
                false
            } else {
                let info = ErrorInfo::new(CANCELLED, "the message was cancelled");
                inner.finish(id, Err(info));
                true
            }
        };
        self.dispatch();
        removed
    }
}
