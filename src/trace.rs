//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) as Baton
//! carries it: a chain's `traceparent` and `tracestate` are two reserved
//! keys of its context map, so every step and callback of the chain (and its
//! retries, and a requeued copy) gets them with its assignment, and any
//! OpenTelemetry text-map propagator can inject into and extract from the
//! context map as it is.
//!
//! The broker refuses a chain whose `traceparent` is malformed; the SDKs
//! check an explicit one before they send it, with the same rules.

/// The context key of the W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The context key of the W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` accepted: the W3C recommendation's 512 characters.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A parsed `traceparent`: `version-traceid-parentid-flags`, in lowercase
/// hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// The 32 hex digits of the trace id (never all zeros).
    pub trace_id: &'a str,
    /// The 16 hex digits of the parent span's id (never all zeros).
    pub parent_id: &'a str,
    /// The trace flags byte (bit 0: sampled).
    pub flags: u8,
}

impl<'a> TraceParent<'a> {
    /// Parses a `traceparent` value.
    ///
    /// Version `00` must be exactly 55 characters; a later version may
    /// append fields after a `-`, which are ignored (as W3C asks of a
    /// version-00 reader). Version `ff` is invalid.
    ///
    /// # Errors
    /// Why the value is not a `traceparent`, in words that name the part.
    pub fn parse(value: &'a str) -> Result<Self, String> {
        let shape = "it must be version-traceid-parentid-flags in lowercase hex, \
                     like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let bytes = value.as_bytes();
        if bytes.len() < 55 || !value.is_char_boundary(55) {
            return Err(format!("{value:?} is too short: {shape}"));
        }
        let (head, rest) = value.split_at(55);
        let parts: Vec<&str> = head.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts[..] else {
            return Err(format!(
                "{value:?} is not four dash-separated fields: {shape}"
            ));
        };
        for (name, part, len) in [
            ("version", version, 2),
            ("trace id", trace_id, 32),
            ("parent id", parent_id, 16),
            ("flags", flags, 2),
        ] {
            if part.len() != len || !part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!(
                    "{value:?} has a bad {name} (want {len} lowercase hex digits): {shape}"
                ));
            }
        }
        if version == "ff" {
            return Err(format!("{value:?} has version ff, which W3C forbids"));
        }
        if version == "00" && !rest.is_empty() {
            return Err(format!("{value:?} is longer than a version-00 traceparent"));
        }
        if !rest.is_empty() && !rest.starts_with('-') {
            return Err(format!("{value:?} has no dash after its flags: {shape}"));
        }
        if trace_id.bytes().all(|b| b == b'0') {
            return Err(format!(
                "{value:?} has an all-zero trace id, which is invalid"
            ));
        }
        if parent_id.bytes().all(|b| b == b'0') {
            return Err(format!(
                "{value:?} has an all-zero parent id, which is invalid"
            ));
        }
        let flags = u8::from_str_radix(flags, 16).expect("checked hex");
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// Checks a `tracestate` value: at most [`MAX_TRACESTATE_LEN`] printable
/// ASCII characters, a comma-separated list of `key=value` members (empty
/// members allowed, as W3C allows them).
///
/// # Errors
/// Why the value is not a `tracestate`.
pub fn check_tracestate(value: &str) -> Result<(), String> {
    if value.len() > MAX_TRACESTATE_LEN {
        return Err(format!(
            "is {} characters, over the limit of {MAX_TRACESTATE_LEN}",
            value.len()
        ));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("holds a character that is not printable ASCII".into());
    }
    for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match member.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {}
            _ => return Err(format!("has a member {member:?} that is not key=value")),
        }
    }
    Ok(())
}

/// The trace id of a chain context's `traceparent` value (`None` when it
/// has none, or a malformed one).
#[must_use]
pub fn trace_id_of(traceparent: Option<&str>) -> Option<&str> {
    traceparent
        .and_then(|v| TraceParent::parse(v).ok())
        .map(|t| t.trace_id)
}

/// The bridge to OpenTelemetry (feature `opentelemetry`): W3C values from
/// and to an OpenTelemetry [`Context`](opentelemetry::Context), without an
/// OpenTelemetry SDK or propagator (the API alone).
#[cfg(feature = "opentelemetry")]
pub mod otel {
    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };

    use super::TraceParent;

    /// The `traceparent` and `tracestate` of `cx`'s span, when it has a
    /// valid one (an empty `tracestate` when it has none).
    #[must_use]
    pub fn inject(cx: &Context) -> Option<(String, String)> {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        Some((traceparent, sc.trace_state().header()))
    }

    /// A context whose remote parent span is the one `traceparent` names
    /// (`None` when it is malformed); a malformed `tracestate` is dropped.
    #[must_use]
    pub fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
        let tp = TraceParent::parse(traceparent).ok()?;
        let state = tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let sc = SpanContext::new(
            TraceId::from_hex(tp.trace_id).ok()?,
            SpanId::from_hex(tp.parent_id).ok()?,
            TraceFlags::new(tp.flags),
            true,
            state,
        );
        Some(Context::new().with_remote_span_context(sc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_parses() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceParent::parse(v).is_ok());
        assert!(TraceParent::parse(&format!("{GOOD}-extra")).is_err());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn tracestate_is_a_list_of_members() {
        assert!(check_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").is_ok());
        assert!(check_tracestate("").is_ok());
        assert!(check_tracestate("novalue").is_err());
        assert!(check_tracestate(&"a=b,".repeat(200)).is_err());
        assert!(check_tracestate("a=\u{e9}").is_err());
    }
}
