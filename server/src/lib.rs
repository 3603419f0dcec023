//! Baton's broker.
