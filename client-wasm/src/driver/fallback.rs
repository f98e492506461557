//! The SSE fallback's I/O: which transport the next connection uses ([`Choice`]), and the HTTP
//! requests the protocol crate's [`Fallback`] asks for, made with `fetch` (called through
//! `Reflect`, so no `web-sys` bindings are linked for it). Every promise of these requests
//! settles into one callback (`Handlers::http`), bound to a context that says which step of
//! which request it is: one closure type instead of one per step keeps the glue small.
//!
//! The rule: after [`SWITCH_AFTER`] WebSocket attempts in a row that fail before the socket
//! opens (what a proxy that refuses the upgrade causes), the next attempt uses the SSE
//! fallback; after as many failed fallback connects in a row (the server is down, not the
//! upgrade refused) the next one tries the WebSocket again. A connection that succeeds resets
//! the count; the client stays on the transport that worked. A fallback connection opens when
//! the server answers `GET /healthz`.

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::fallback::{Fallback, Input, Op};
use redistribute_protocol::lite::{decode_server, encode_client};
use redistribute_protocol::session::{DisconnectReason, Event};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::{now, set, Inner, Link, Topic};
use crate::errors::ErrorInfo;

/// `transports` bit: the WebSocket.
pub(crate) const WEBSOCKET: u8 = 1;
/// `transports` bit: the SSE fallback.
pub(crate) const SSE: u8 = 2;
/// Failed connection attempts in a row after which the other transport is tried.
const SWITCH_AFTER: u8 = 2;

/// The transports allowed and the one in use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choice {
    allowed: u8,
    /// Whether the next (or current) connection uses the fallback.
    pub(super) sse: bool,
    failures: u8,
    /// Whether the current WebSocket fired `open`.
    pub(super) opened: bool,
}

impl Choice {
    /// `allowed` transports, starting with the fallback when `sse_first`.
    pub(crate) fn new(allowed: u8, sse_first: bool) -> Choice {
        Choice {
            allowed,
            sse: sse_first || allowed == SSE,
            failures: 0,
            opened: false,
        }
    }

    /// `websocket` or `sse`.
    pub(crate) fn name(&self) -> &'static str {
        if self.sse {
            "sse"
        } else {
            "websocket"
        }
    }

    /// Counts an attempt that failed (or succeeded); returns whether the transport changed.
    fn note(&mut self, failed: bool) -> bool {
        if !failed {
            self.failures = 0;
            return false;
        }
        self.failures += 1;
        if self.failures < SWITCH_AFTER || self.allowed != WEBSOCKET | SSE {
            return false;
        }
        self.failures = 0;
        self.sse = !self.sse;
        true
    }
}

/// The `transports` option: the allowed transports and the first.
pub(crate) fn transports(v: &JsValue) -> Result<Choice, ErrorInfo> {
    if v.is_undefined() {
        return Ok(Choice::new(WEBSOCKET | SSE, false));
    }
    let bad = || {
        let why = "transports must be a non-empty array of 'websocket' and 'sse'";
        ErrorInfo::new(crate::errors::BAD_CONFIG, why)
    };
    let list: &Array = v.dyn_ref().ok_or_else(bad)?;
    let mut allowed = 0;
    for item in list.iter() {
        allowed |= match item.as_string().as_deref() {
            Some("websocket") => WEBSOCKET,
            Some("sse") => SSE,
            _ => return Err(bad()),
        };
    }
    if allowed == 0 {
        return Err(bad());
    }
    Ok(Choice::new(
        allowed,
        list.get(0).as_string().as_deref() == Some("sse"),
    ))
}

/// The fallback of the current connection and its stream's `AbortController`.
pub(super) struct SseLink {
    fb: Fallback,
    stream: Option<JsValue>,
    /// The current stream's `TextDecoder`.
    decoder: JsValue,
}

impl SseLink {
    fn abort(&mut self) {
        if let Some(controller) = self.stream.take() {
            let _ = method(&controller, "abort", &[]);
        }
    }

    /// Ends the current virtual connection: its stream and every late outcome.
    pub(super) fn close(&mut self) {
        self.abort();
        self.fb.reset();
    }
}

impl Inner {
    /// Counts connection outcomes for the transport choice (on a driver with a real link).
    pub(super) fn note_transport(&mut self, event: &Event) {
        if matches!(self.link, Link::Bus(_)) {
            return;
        }
        let changed = match event {
            Event::Connected { .. } => self.choice.note(false),
            Event::ConnectFailed { .. } if self.choice.sse || !self.choice.opened => {
                self.choice.note(true)
            }
            _ => false,
        };
        if changed {
            self.transport_changed();
        }
    }

    /// Tells the page (and, on the leader, the tabs at their next `open`) the transport.
    pub(super) fn transport_changed(&mut self) {
        let name = self.choice.name();
        if let Some(leader) = self.leader.as_mut() {
            leader.transport = name;
        }
        self.emit(Topic::Transport, vec![name.into()]);
    }

    /// Opens a fallback connection to `target`: the server's `/healthz` answering is the open.
    pub(super) fn open_sse(&mut self, target: &str) {
        if !matches!(self.link, Link::Sse(_)) {
            self.close_socket();
            self.link = Link::Sse(Box::new(SseLink {
                fb: Fallback::new(target),
                stream: None,
                decoder: JsValue::UNDEFINED,
            }));
        }
        let Link::Sse(link) = &mut self.link else {
            return;
        };
        link.close();
        link.fb.retarget(target);
        let conn = link.fb.conn();
        let url = link.fb.route("healthz");
        let promise = fetch(&url, &init(None, None, None));
        self.then(&promise, Step::Health, conn, 0, None);
    }

    /// Carries out the fallback's operations and feeds its inputs to the session; returns
    /// whether there was anything.
    pub(super) fn drive_sse(&mut self) -> bool {
        let Link::Sse(link) = &mut self.link else {
            return false;
        };
        let mut busy = false;
        let mut waits = Vec::new();
        for op in link.fb.take_ops() {
            busy = true;
            waits.extend(run(link, op));
        }
        let inputs = link.fb.take_inputs();
        for (promise, step, a, b) in waits {
            self.then(&promise, step, a, b, None);
        }
        for input in inputs {
            busy = true;
            let t = now();
            match input {
                Input::Frame(frame) => self.session.handle_frame(frame, t),
                Input::Text(text) => self.session.handle_text_with(&text, t, decode_server),
                Input::Closed(reason) => self.session.handle_transport_closed(t, reason),
            }
        }
        busy
    }

    /// Sends a session frame over the fallback, if that is the link.
    pub(super) fn send_sse(&mut self, frame: redistribute_protocol::ClientFrame) {
        if let Link::Sse(link) = &mut self.link {
            link.fb.send(frame);
        }
    }

    /// Settles `promise` into `Handlers::http` with the context `[step, a, b, extra]`, its
    /// rejection with `[step + 1, …]`.
    fn then(&self, promise: &JsValue, step: Step, a: u64, b: u64, extra: Option<&JsValue>) {
        let Some(handlers) = &self.handlers else {
            return;
        };
        let http: &JsValue = handlers.http.as_ref();
        let bound = |step: u8| {
            let ctx = Array::of3(&step.into(), &(a as f64).into(), &(b as f64).into());
            if let Some(extra) = extra {
                ctx.push(extra);
            }
            method(http, "bind", &[JsValue::NULL, ctx.into()]).unwrap_or_default()
        };
        let (ok, err) = (bound(step as u8), bound(step as u8 + 1));
        let _ = method(promise, "then", &[ok, err]);
    }

    /// A settled promise of the fallback's requests (see [`Inner::then`]).
    pub(super) fn on_http(&mut self, ctx: &JsValue, value: JsValue) {
        let ctx: &Array = ctx.unchecked_ref();
        let num = |i| ctx.get(i).as_f64().unwrap_or_default() as u64;
        let (step, a, b) = (num(0) as u8, num(1), num(2));
        let error = || {
            Reflect::get(&value, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| "the request failed".into())
        };
        let Link::Sse(link) = &mut self.link else {
            return;
        };
        let fb = &mut link.fb;
        let status = || {
            Reflect::get(&value, &"status".into())
                .ok()
                .and_then(|s| s.as_f64())
                .unwrap_or_default() as u16
        };
        let text = || method(&value, "text", &[]).unwrap_or_default();
        let mut next = None;
        match step {
            s if s == Step::Health as u8 && fb.conn() == a => {
                let status = status();
                if Reflect::get(&value, &"ok".into()).ok() == Some(JsValue::TRUE) {
                    self.session.handle_transport_open(now());
                } else {
                    let why = format!("GET /healthz answered HTTP {status}");
                    let reason = DisconnectReason::transport(Some(status), why);
                    self.session.handle_transport_closed(now(), reason);
                }
            }
            s if s == Step::Health as u8 + 1 && fb.conn() == a => {
                let reason = DisconnectReason::transport(None, error());
                self.session.handle_transport_closed(now(), reason);
            }
            s if s == Step::Stream as u8 => match status() {
                200 => {
                    let body = Reflect::get(&value, &"body".into()).unwrap_or_default();
                    match method(&body, "getReader", &[]) {
                        Ok(reader) => next = Some((Step::Read, a, 0, reader)),
                        Err(_) => fb.stream_ended(a, "the event stream has no readable body"),
                    }
                }
                status => next = Some((Step::Refused, a, u64::from(status), JsValue::NULL)),
            },
            s if s == Step::Read as u8 => {
                if Reflect::get(&value, &"done".into()).ok() == Some(JsValue::TRUE) {
                    fb.stream_ended(a, "the event stream ended");
                } else {
                    // Decoded by the stream's `TextDecoder` (not `Uint8Array::to_vec`, whose
                    // length assertion links the panic formatting).
                    let chunk = Reflect::get(&value, &"value".into()).unwrap_or_default();
                    let options: JsValue = Object::new().into();
                    set(&options, "stream", &JsValue::TRUE);
                    let text = method(&link.decoder, "decode", &[chunk, options])
                        .ok()
                        .and_then(|t| t.as_string())
                        .unwrap_or_default();
                    fb.stream_data(a, text.as_bytes());
                    if fb.is_current(a) {
                        next = Some((Step::Read, a, 0, ctx.get(3)));
                    }
                }
            }
            s if s == Step::Refused as u8 => {
                let body = value.as_string().unwrap_or_default();
                fb.stream_refused(a, b as u16, &body);
            }
            s if s == Step::Stream as u8 + 1
                || s == Step::Read as u8 + 1
                || s == Step::Refused as u8 + 1 =>
            {
                fb.stream_ended(a, &error());
            }
            s if s == Step::Post as u8 => {
                let status = JsValue::from(status());
                let promise = text();
                self.then(&promise, Step::PostBody, a, b, Some(&status));
            }
            s if s == Step::PostBody as u8 => {
                let status = ctx.get(3).as_f64().unwrap_or_default() as u16;
                let body = value.as_string().unwrap_or_default();
                fb.post_response(a, b, status, &body);
            }
            s if s == Step::Post as u8 + 1 || s == Step::PostBody as u8 + 1 => {
                fb.post_failed(a, b, &error());
            }
            _ => {}
        }
        if let Some((step, a, b, extra)) = next {
            let promise = match step {
                Step::Read => method(&extra, "read", &[]).unwrap_or_default(),
                _ => text(),
            };
            let extra = (!extra.is_null()).then_some(&extra);
            self.then(&promise, step, a, b, extra);
        }
    }
}

/// The steps of the fallback's requests; a rejection is the step plus one.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `GET /healthz` answered (`a`: the connection).
    Health = 0,
    /// `GET /sse` answered (`a`: the stream's epoch).
    Stream = 2,
    /// A chunk of the stream was read (`extra`: its reader).
    Read = 4,
    /// The body of a refused stream was read (`b`: the status).
    Refused = 6,
    /// `POST /publish` answered (`a`: the connection, `b`: the request id).
    Post = 8,
    /// Its body was read (`b`: the request id, `extra`: the status).
    PostBody = 10,
}

/// Carries out one operation; returns the promise to wait for, if any.
fn run(link: &mut SseLink, op: Op) -> Option<(JsValue, Step, u64, u64)> {
    match op {
        Op::Abort => {
            link.abort();
            None
        }
        Op::Open { epoch, url, token } => {
            link.abort();
            let controller = construct("AbortController");
            link.decoder = construct("TextDecoder").unwrap_or_default();
            let signal = controller
                .as_ref()
                .and_then(|c| Reflect::get(c, &"signal".into()).ok());
            link.stream = controller;
            let promise = fetch(&url, &init(token.as_deref(), None, signal));
            Some((promise, Step::Stream, epoch, 0))
        }
        Op::Post {
            conn,
            id,
            url,
            token,
            frame,
        } => {
            let init = init(token.as_deref(), Some(encode_client(&frame)), None);
            Some((fetch(&url, &init), Step::Post, conn, id))
        }
    }
}

/// `new globalThis[name]()`, if there is such a class.
fn construct(name: &str) -> Option<JsValue> {
    Reflect::get(&js_sys::global(), &name.into())
        .ok()
        .and_then(|c| c.dyn_into::<Function>().ok())
        .and_then(|c| Reflect::construct(&c, &Array::new()).ok())
}

/// `fetch(url, init)`, or a rejected promise where there is no `fetch`.
fn fetch(url: &str, init: &JsValue) -> JsValue {
    let global = js_sys::global();
    Reflect::get(&global, &"fetch".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .and_then(|f| f.call2(&global, &url.into(), init).ok())
        .unwrap_or_else(|| Promise::reject(&"fetch is not available".into()).into())
}

/// The options of a `fetch`: a POST of `body` when given, the token as a bearer, no cache.
fn init(token: Option<&str>, body: Option<String>, signal: Option<JsValue>) -> JsValue {
    let init: JsValue = Object::new().into();
    set(&init, "cache", &"no-store".into());
    if let Some(body) = body {
        set(&init, "method", &"POST".into());
        set(&init, "body", &body.into());
    }
    if let Some(token) = token {
        let headers: JsValue = Object::new().into();
        set(&headers, "Authorization", &format!("Bearer {token}").into());
        set(&init, "headers", &headers);
    }
    if let Some(signal) = signal {
        set(&init, "signal", &signal);
    }
    init
}

/// Calls `target[name](...args)`.
fn method(target: &JsValue, name: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = Reflect::get(target, &name.into())?.dyn_into()?;
    f.apply(target, &args.iter().collect())
}
