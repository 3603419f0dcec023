//! Baton worker SDK.
