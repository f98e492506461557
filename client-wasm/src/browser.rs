//! The browser APIs the client imports that `web-sys` does not bind for it (or binds at a
//! higher code-size cost): the clock, timers, the random seed, the Web Locks API and the page
//! lifecycle events (`online`, `visibilitychange`). Nothing
//! here is visible to JavaScript; the exported surface is in `bindings`.

use std::time::Duration;

use js_sys::{Function, Object, Promise, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::driver::set;

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`: the session clock.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    pub(crate) fn performance_now() -> f64;

    /// `setTimeout(handler, ms)`; returns the timer id.
    #[wasm_bindgen(js_name = setTimeout)]
    pub(crate) fn set_timeout(handler: &Function, ms: i32) -> JsValue;

    /// `clearTimeout(id)`.
    #[wasm_bindgen(js_name = clearTimeout)]
    pub(crate) fn clear_timeout(id: &JsValue);

    /// `crypto.getRandomValues(buffer)`: the session seed.
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buffer: &Uint8Array);

    /// `addEventListener` on the global object (the window); throws where there is none.
    #[wasm_bindgen(catch, js_name = addEventListener)]
    fn add_window_listener(event: &str, handler: &Function) -> Result<(), JsValue>;

    /// `removeEventListener` on the global object.
    #[wasm_bindgen(catch, js_name = removeEventListener)]
    fn remove_window_listener(event: &str, handler: &Function) -> Result<(), JsValue>;

    /// `document.addEventListener`; throws where there is no document (workers, Node).
    #[wasm_bindgen(catch, js_namespace = document, js_name = addEventListener)]
    fn add_document_listener(event: &str, handler: &Function) -> Result<(), JsValue>;

    /// `document.removeEventListener`.
    #[wasm_bindgen(catch, js_namespace = document, js_name = removeEventListener)]
    fn remove_document_listener(event: &str, handler: &Function) -> Result<(), JsValue>;

    /// `navigator.locks`.
    #[derive(Clone)]
    pub(crate) type LockManager;

    #[wasm_bindgen(method, js_name = request)]
    fn request(this: &LockManager, name: &str, options: &JsValue, callback: &JsValue) -> Promise;
}

/// `ms` milliseconds as a `Duration`, saturating: NaN and negative are zero, too large is the
/// largest (about 584 years). `Duration::from_secs_f64` would add a conversion routine and
/// its panics (a page passing `requestTimeout: 1e300` would abort the module) to the binary.
pub(crate) fn millis(ms: f64) -> Duration {
    Duration::from_nanos((ms * 1e6) as u64)
}

/// A random seed from `crypto.getRandomValues`.
pub(crate) fn seed() -> u64 {
    let buffer = Uint8Array::new_with_length(8);
    get_random_values(&buffer);
    // Byte by byte, not `copy_to`: no length assertion (and its formatting) in the binary.
    (0..8).fold(0, |seed, i| {
        seed | u64::from(buffer.get_index(i)) << (8 * i)
    })
}

/// Calls `handler` when the network comes back (`online` on the window) and when the page's
/// visibility changes; `on: false` removes it again. Where the APIs are missing (Node, a
/// worker) nothing happens.
pub(crate) fn watch_lifecycle(handler: &Function, on: bool) {
    let (window, document) = if on {
        (
            add_window_listener("online", handler),
            add_document_listener("visibilitychange", handler),
        )
    } else {
        (
            remove_window_listener("online", handler),
            remove_document_listener("visibilitychange", handler),
        )
    };
    let _ = (window, document);
}

/// Whether the page is hidden (`document.visibilityState === "hidden"`); `false` without a
/// document.
pub(crate) fn page_hidden() -> bool {
    let global: JsValue = js_sys::global().into();
    js_sys::Reflect::get(&global, &"document".into())
        .and_then(|d| js_sys::Reflect::get(&d, &"visibilityState".into()))
        .ok()
        .and_then(|v| v.as_string())
        .is_some_and(|v| v == "hidden")
}

/// A promise that stays pending until the returned function is called.
pub(crate) fn held() -> (Promise, Function) {
    let mut slot = None;
    let promise = Promise::new(&mut |resolve, _| slot = Some(resolve));
    (promise, slot.expect("the executor runs synchronously"))
}

/// Requests a lock; `granted` runs once with the lock (or `null` with `ifAvailable`) and
/// returns what holds it (a promise) or `undefined` to release it at once.
pub(crate) fn request_lock(
    locks: &LockManager,
    name: &str,
    if_available: bool,
    granted: impl FnOnce(JsValue) -> JsValue + 'static,
) {
    let options: JsValue = Object::new().into();
    if if_available {
        set(&options, "ifAvailable", &JsValue::TRUE);
    }
    let callback = Closure::once_into_js(granted);
    // Rejects only when the lock is stolen or aborted, which this client never does.
    let _ = locks.request(name, &options, &callback);
}
