//! The page's arguments checked and turned into Rust values: the options of `new Client`,
//! `publish`, `history` and the subscription objects.

use std::time::Duration;

use js_sys::{Array, Function, Reflect};
use redistribute_protocol::session::{Config, PublishOptions};
use redistribute_protocol::Offset;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::cache::{Cache, DEFAULT_LIMIT};
use crate::driver::{Setup, SubOptions};
use crate::errors::{ErrorInfo, BAD_CONFIG, BAD_REQUEST};
use crate::namespace::Namespace;
use crate::outbox::Outbox;
use crate::storage::LocalStorage;

/// An optional offset argument (`'$'` when absent).
pub(super) fn parse_offset(offset: Option<String>) -> Result<Offset, ErrorInfo> {
    offset
        .as_deref()
        .map(Offset::parse)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| ErrorInfo::new(BAD_REQUEST, e.to_string()))
}

/// The optional argument of `newSubscription`.
pub(super) fn sub_options(options: Option<&JsValue>) -> Result<SubOptions, ErrorInfo> {
    let option = |name| options.map_or(JsValue::UNDEFINED, |o| get(o, name));
    start_options(option("offset").as_string(), &option("rewind"))
}

/// Where a subscription starts: `offset` when given (e.g. a cached one after a reload), else
/// the channel's last `rewind` messages, else `'$'`.
pub(super) fn start_options(
    offset: Option<String>,
    rewind: &JsValue,
) -> Result<SubOptions, ErrorInfo> {
    let rewind = match (&offset, rewind.as_f64()) {
        (None, Some(n)) => Some(n as u64),
        _ => None,
    };
    Ok(SubOptions {
        offset: parse_offset(offset)?,
        rewind,
    })
}

/// A property of an options object (`undefined` when absent).
pub(super) fn get(options: &JsValue, name: &str) -> JsValue {
    Reflect::get(options, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

/// `history`'s options; a bad offset or number is `bad_request`.
pub(super) fn history_options(
    options: &JsValue,
) -> Result<redistribute_protocol::history::HistoryOptions, ErrorInfo> {
    let bad = |e: redistribute_protocol::ProtocolError| ErrorInfo::new(BAD_REQUEST, e.to_string());
    let from = get(options, "from").as_string();
    let to = get(options, "to").as_string();
    let limit = get(options, "limit").as_f64();
    Ok(redistribute_protocol::history::HistoryOptions {
        from: from
            .as_deref()
            .map(Offset::parse)
            .transpose()
            .map_err(bad)?,
        to: to
            .as_deref()
            .map(redistribute_protocol::StreamId::parse)
            .transpose()
            .map_err(bad)?,
        limit: limit.map(|n| n as u64),
        reverse: get(options, "reverse").is_truthy(),
    })
}

pub(super) fn bad_config(why: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new(BAD_CONFIG, why)
}

/// An optional function option.
pub(super) fn function(options: &JsValue, name: &str) -> Result<Option<Function>, ErrorInfo> {
    let v = get(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| bad_config(format!("{name} must be a function")))
}

/// Message tail of a number option that must be a non-negative number.
pub(super) const NON_NEGATIVE: &str = " must be a non-negative number";
/// Message tail of a number option that must be a non-negative whole number.
pub(super) const WHOLE: &str = " must be a non-negative whole number";

/// An optional number option (absent when `undefined` or `null`) in `[min, max]`, and whole
/// when `whole`; else a `bad_config` error whose message is `name` then `why`. One
/// non-generic check for every number option keeps the browser's code small.
pub(super) fn number(
    options: &JsValue,
    name: &str,
    min: f64,
    max: f64,
    whole: bool,
    why: &str,
) -> Result<Option<f64>, ErrorInfo> {
    let v = get(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n >= min && n <= max && (!whole || n.fract() == 0.0) => Ok(Some(n)),
        _ => {
            let mut message = String::from(name);
            message.push_str(why);
            Err(bad_config(message))
        }
    }
}

/// An optional number option that must be a non-negative (finite) number.
pub(super) fn non_negative(options: &JsValue, name: &str) -> Result<Option<f64>, ErrorInfo> {
    number(options, name, 0.0, f64::MAX, false, NON_NEGATIVE)
}

/// `minReconnectDelay`, `maxReconnectDelay`, `reconnectJitter` and `pingInterval`, checked with
/// the page's names in the messages.
pub(super) fn backoff(options: &JsValue, config: &mut Config) -> Result<(), ErrorInfo> {
    let ms = crate::browser::millis;
    if let Some(min) = non_negative(options, "minReconnectDelay")? {
        if min == 0.0 {
            return Err(bad_config("minReconnectDelay must be positive"));
        }
        config.backoff_initial = ms(min);
    }
    if let Some(max) = non_negative(options, "maxReconnectDelay")? {
        config.backoff_max = ms(max);
    }
    if config.backoff_max < config.backoff_initial {
        return Err(bad_config(
            "maxReconnectDelay must be at least minReconnectDelay (defaults: 10000 and 100)",
        ));
    }
    if let Some(jitter) = number(
        options,
        "reconnectJitter",
        0.0,
        1.0,
        false,
        " must be between 0 and 1",
    )? {
        config.backoff_jitter = jitter;
    }
    config.ping_interval = match non_negative(options, "pingInterval")? {
        Some(0.0) => None,
        Some(n) => Some(ms(n)),
        None => Some(DEFAULT_PING_INTERVAL),
    };
    Ok(())
}

/// Default of the `pingInterval` option: 25 s, the server's default ping interval.
pub(super) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);

/// Checks the options of `new Client`.
pub(super) fn setup(options: &JsValue) -> Result<Setup, ErrorInfo> {
    if !options.is_object() {
        return Err(bad_config("options must be an object with `targets`"));
    }
    let targets = get(options, "targets");
    let targets: Vec<String> = if let Some(one) = targets.as_string() {
        vec![one]
    } else if Array::is_array(&targets) {
        Array::from(&targets)
            .iter()
            .map(|t| t.as_string())
            .collect::<Option<_>>()
            .ok_or_else(|| bad_config("targets must be strings"))?
    } else {
        return Err(bad_config("targets must be a URL or an array of URLs"));
    };
    if let Some(t) = targets
        .iter()
        .find(|t| !(t.starts_with("ws://") || t.starts_with("wss://")))
    {
        let mut message = String::from("target \"");
        message.push_str(t);
        message.push_str("\" is not a ws:// or wss:// URL");
        return Err(bad_config(message));
    }
    let mut config = Config::new(targets);
    let token = get(options, "token");
    if !token.is_undefined() && !token.is_null() {
        config.token = Some(
            token
                .as_string()
                .ok_or_else(|| bad_config("token must be a string"))?,
        );
    }
    if let Some(ms) = non_negative(options, "requestTimeout")? {
        config.request_timeout = crate::browser::millis(ms);
    }
    backoff(options, &mut config)?;
    // Transient subscribe failures are retried forever unless the page caps them.
    if get(options, "retrySubscribe") == JsValue::FALSE {
        config.retry_subscribe = false;
    }
    config.join_leave = get(options, "joinLeave") == JsValue::TRUE;
    config.subscribe_retry_limit = number(
        options,
        "subscribeRetryLimit",
        0.0,
        f64::from(u32::MAX),
        true,
        WHOLE,
    )?
    .map(|n| n as u32);
    config.validate().map_err(|e| ErrorInfo::session(&e))?;

    let namespace = match get(options, "namespace") {
        v if v.is_undefined() || v.is_null() => None,
        v => Some(
            v.as_string()
                .ok_or_else(|| bad_config("namespace must be a string"))?,
        ),
    };
    let namespace = Namespace::new(&config.targets, namespace.as_deref());
    let limit = number(options, "cacheSize", 0.0, f64::MAX, true, WHOLE)?
        .map_or(DEFAULT_LIMIT, |n| n as usize);
    let (cache, cache_problem) = if get(options, "localStorage") == JsValue::FALSE {
        (None, None)
    } else {
        // A localStorage that throws falls back to memory; the page hears why.
        let (storage, problem) = LocalStorage::open_or_memory();
        let problem = problem.map(|e| {
            ErrorInfo::cache(&crate::cache::CacheError::Unavailable(format!(
                "{e}; caching in memory for this page instead"
            )))
        });
        (Some(Cache::new(storage, limit, &namespace)), problem)
    };
    let scope = crate::outbox::scope(
        &config
            .targets
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let share_scope = crate::outbox::scope(&[&scope, config.token.as_deref().unwrap_or("")]);
    let outbox_limit = number(
        options,
        "outboxSize",
        1.0,
        f64::MAX,
        true,
        " must be a whole number of at least 1",
    )?
    .map_or(crate::outbox::DEFAULT_LIMIT, |n| n as usize);
    let outbox = if get(options, "outbox") == JsValue::FALSE {
        None
    } else {
        let (storage, _) = LocalStorage::open_or_memory();
        Some(Outbox::new(storage, &namespace, &scope, outbox_limit))
    };
    Ok(Setup {
        share: get(options, "shareSocket") != JsValue::FALSE,
        outbox,
        scope: share_scope,
        outbox_seed: crate::browser::seed(),
        config,
        seed: crate::browser::seed(),
        cache,
        cache_problem,
        encode: function(options, "encode")?,
        decode: function(options, "decode")?,
        token_provider: function(options, "tokenProvider")?,
    })
}

/// The optional third argument of `publish`.
pub(super) fn publish_options(options: &JsValue) -> Result<PublishOptions, ErrorInfo> {
    let mut out = PublishOptions::default();
    if options.is_undefined() || options.is_null() {
        return Ok(out);
    }
    let bad = |why: &str| ErrorInfo::new(BAD_REQUEST, why);
    let maxlen = get(options, "maxlen");
    if !maxlen.is_undefined() {
        match maxlen.as_f64() {
            Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= u64::MAX as f64 => {
                out.maxlen = Some(n as u64)
            }
            _ => return Err(bad("maxlen must be a whole number of at least 1")),
        }
    }
    let key = get(options, "idempotencyKey");
    if !key.is_undefined() {
        out.idempotency_key = Some(
            key.as_string()
                .ok_or_else(|| bad("idempotencyKey must be a string"))?,
        );
    }
    Ok(out)
}
