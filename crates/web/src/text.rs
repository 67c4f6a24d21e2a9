//! How values read on a page: names, enum values as their wire names, instants, money, URL
//! parts.

use chronicle_core::customer::Customer;
use serde::Serialize;
use serde_json::Value;

/// A customer's name from their traits (first and last name, else `name`).
pub(crate) fn display_name(c: &Customer) -> String {
    let part = |k: &str| c.traits.get(k).and_then(Value::as_str).unwrap_or_default().trim().to_owned();
    let name = format!("{} {}", part("first_name"), part("last_name")).trim().to_owned();
    if !name.is_empty() {
        return name;
    }
    c.traits.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_default()
}

/// An enum value as its wire name (`email`, `in_app`, `mql`).
pub(crate) fn lower<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A JSON value as text (a string without its quotes).
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An instant as the pages show it, in UTC.
pub(crate) fn fmt_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap_or_default().trim_start_matches('=').to_owned()
}

/// An amount in minor units (cents) with its currency: `1200.00 EUR`.
pub(crate) fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", m / 100, m % 100)
}
