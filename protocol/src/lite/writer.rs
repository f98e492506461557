//! The hand-written codec's JSON writer: a frame built member by member, in field order.

use serde_json::{Map, Value};

use crate::frame::Message;
use crate::json;

/// Builds `{"type":…,…}` in field order.
pub(super) struct Writer {
    pub(super) out: String,
}

impl Writer {
    pub(super) fn start(kind: &str) -> Self {
        let mut out = String::from("{\"type\":");
        json::write_str(&mut out, kind);
        Writer { out }
    }

    pub(super) fn new(kind: &str, id: u64) -> Self {
        Writer::start(kind).u64("id", id)
    }

    pub(super) fn key(mut self, key: &str) -> Self {
        self.out.push(',');
        json::write_str(&mut self.out, key);
        self.out.push(':');
        self
    }

    pub(super) fn raw(mut self, text: &str) -> Self {
        self.out.push_str(text);
        self
    }

    pub(super) fn bool(self, key: &str, flag: bool) -> Self {
        self.key(key).raw(if flag { "true" } else { "false" })
    }

    /// `"messages":[{"offset":…,"fields":{…}},…]`.
    pub(super) fn messages(self, messages: &[Message]) -> Self {
        let mut w = self.key("messages");
        w.out.push('[');
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                w.out.push(',');
            }
            w.out.push_str("{\"offset\":");
            json::write_str(&mut w.out, &m.offset.to_string());
            w.out.push_str(",\"fields\":");
            json::write_object(&mut w.out, &m.fields);
            w.out.push('}');
        }
        w.out.push(']');
        w
    }

    pub(super) fn u64(self, key: &str, n: u64) -> Self {
        let mut w = self.key(key);
        w.out.push_str(&n.to_string());
        w
    }

    pub(super) fn str(self, key: &str, s: &str) -> Self {
        let mut w = self.key(key);
        json::write_str(&mut w.out, s);
        w
    }

    pub(super) fn object(self, key: &str, map: &Map<String, Value>) -> Self {
        let mut w = self.key(key);
        json::write_object(&mut w.out, map);
        w
    }

    pub(super) fn opt_u64(self, key: &str, n: Option<u64>) -> Self {
        match n {
            Some(n) => self.u64(key, n),
            None => self,
        }
    }

    pub(super) fn opt_str(self, key: &str, s: &Option<String>) -> Self {
        match s {
            Some(s) => self.str(key, s),
            None => self,
        }
    }

    pub(super) fn end(mut self) -> String {
        self.out.push('}');
        self.out
    }
}
