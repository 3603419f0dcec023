//! The broker's address when the program is not told one: `$BATON_ADDR`,
//! the variable of the `baton` command and of every SDK.

/// The broker's default address (`baton serve`'s default `--listen`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7070";

/// The environment variable that names the broker for clients and workers.
pub const ADDR_VAR: &str = "BATON_ADDR";

/// The name the Python SDK read before [`ADDR_VAR`]; still honoured when
/// `$BATON_ADDR` is not set, with a warning.
pub const DEPRECATED_ADDR_VAR: &str = "BATON_ADDRESS";

/// The broker address the environment names: `$BATON_ADDR`, else the
/// deprecated `$BATON_ADDRESS` (logging a `tracing` warning), else
/// [`DEFAULT_ADDR`]. Examples and tools use it as their default, so that
/// one variable points every part of Baton at the same broker.
#[must_use]
pub fn addr_from_env() -> String {
    let (addr, deprecated) = addr_from(|name| std::env::var(name).ok());
    if deprecated {
        tracing::warn!(
            addr = %addr,
            "${DEPRECATED_ADDR_VAR} is deprecated, use ${ADDR_VAR}"
        );
    }
    addr
}

/// [`addr_from_env`]'s choice from a lookup: the address, and whether it
/// came from the deprecated variable. Empty values count as unset.
fn addr_from(var: impl Fn(&str) -> Option<String>) -> (String, bool) {
    let set = |name| var(name).filter(|value: &String| !value.is_empty());
    if let Some(addr) = set(ADDR_VAR) {
        (addr, false)
    } else if let Some(addr) = set(DEPRECATED_ADDR_VAR) {
        (addr, true)
    } else {
        (DEFAULT_ADDR.to_owned(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> (String, bool) {
        addr_from(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn baton_addr_first_then_the_deprecated_name_then_the_default() {
        let both = [("BATON_ADDR", "a:1"), ("BATON_ADDRESS", "b:2")];
        assert_eq!(lookup(&both), ("a:1".to_owned(), false));
        assert_eq!(
            lookup(&[("BATON_ADDRESS", "b:2")]),
            ("b:2".to_owned(), true)
        );
        assert_eq!(
            lookup(&[("BATON_ADDR", ""), ("BATON_ADDRESS", "")]),
            (DEFAULT_ADDR.to_owned(), false)
        );
    }
}
