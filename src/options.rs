//! How to reach a broker that asks for a token, serves TLS, or both.
//!
//! [`ClientOptions`] is shared by the client ([`Client::connect_with`]) and
//! the Rust worker SDK, so both speak to a secured broker the same way: the
//! token travels as `authorization: Bearer <token>` metadata on every call,
//! and TLS is rustls (tonic's `tls-ring`), trusting either the given CA or
//! the system's roots.
//!
//! [`Client::connect_with`]: crate::Client::connect_with

use std::fmt;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// A token and TLS settings for a connection to the broker.
///
/// ```
/// # fn demo(ca_pem: Vec<u8>) {
/// let options = baton::ClientOptions::new()
///     .token("baton_...")
///     .tls(baton::TlsOptions::new().ca_pem(ca_pem));
/// # let _ = options;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ClientOptions {
    token: Option<String>,
    tls: Option<TlsOptions>,
    timeout: Option<Duration>,
}

/// How long a client's call waits for its answer unless told otherwise:
/// the Python, TypeScript and Go SDKs' default too.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClientOptions {
    /// No token, no TLS (unless the endpoint says `https://`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The secret of a broker token, sent on every call. Surrounding
    /// whitespace (a newline read from a file) is ignored.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS settings; the connection uses `https` whatever scheme the
    /// endpoint names.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long a call of [`Client`](crate::Client) waits for its answer
    /// (default `DEFAULT_CALL_TIMEOUT`, 30 s). A call with no answer by
    /// then fails with `DEADLINE_EXCEEDED`; with several brokers it is
    /// first made at the next one, since a broker that stopped answering
    /// (a leader frozen, its machine paused) is deposed within its lease
    /// and a standby takes over. A watch is bounded only until it opens.
    /// The worker SDK does not use it: its stream has heartbeats and
    /// leases.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The call timeout: as set, or `DEFAULT_CALL_TIMEOUT` (30 s).
    pub fn call_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CALL_TIMEOUT)
    }

    /// The tonic endpoint for `endpoint` (`host:port` or a URI) with these
    /// options' TLS. With TLS options the scheme becomes `https`; an
    /// `https://` endpoint without them gets TLS trusting the system's
    /// roots.
    ///
    /// # Errors
    ///
    /// When the endpoint is not a URI, or a PEM given is unusable.
    pub fn endpoint(
        &self,
        endpoint: impl Into<String>,
    ) -> std::result::Result<Endpoint, tonic::transport::Error> {
        let uri = crate::endpoint_uri(endpoint.into());
        let https = uri.starts_with("https://");
        let tls = match (&self.tls, https) {
            (Some(tls), _) => Some(tls.clone()),
            (None, true) => Some(TlsOptions::new()),
            (None, false) => None,
        };
        let Some(tls) = tls else {
            return Endpoint::from_shared(uri);
        };
        let uri = match uri.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => uri,
        };
        Endpoint::from_shared(uri)?.tls_config(tls.config())
    }

    /// The `authorization` metadata value of the token, if any.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] when the token is empty or not visible ASCII.
    pub fn authorization(&self) -> Result<Option<AsciiMetadataValue>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidToken);
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidToken)?;
        Ok(Some(value))
    }
}

/// TLS settings of a connection: whom to trust, the broker's name, and
/// the client certificate for mutual TLS.
#[derive(Clone, Default)]
pub struct TlsOptions {
    ca_pem: Option<Vec<u8>>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.is_some())
            .field("domain", &self.domain)
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// Trust the system's roots; the broker's name comes from the endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust only this CA (PEM, one or more certificates), for a broker
    /// whose certificate a private CA signed.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The name the broker's certificate must carry, when it differs from
    /// the endpoint's host (e.g. connecting by IP).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// A client certificate chain and its private key (PEM), for a broker
    /// with mutual TLS (required there for workers).
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// Puts the token on every call of the client's stubs; does nothing
/// without one.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// An interceptor sending `value` as the `authorization` metadata.
    pub fn new(value: Option<AsciiMetadataValue>) -> Self {
        Self(value)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_bearer_metadata() {
        let none = ClientOptions::new().authorization().unwrap();
        assert!(none.is_none());
        let value = ClientOptions::new()
            .token(" abc\n")
            .authorization()
            .unwrap();
        assert_eq!(value.unwrap().to_str().unwrap(), "Bearer abc");
        for bad in ["", "a b", "é"] {
            assert!(matches!(
                ClientOptions::new().token(bad).authorization(),
                Err(Error::InvalidToken)
            ));
        }
        let mut bearer = Bearer::new(Some("Bearer t".parse().unwrap()));
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer t");
    }

    #[test]
    fn tls_turns_the_scheme_to_https() {
        let tls = ClientOptions::new().tls(TlsOptions::new().domain("broker"));
        let e = tls.endpoint("127.0.0.1:7070").unwrap();
        assert_eq!(e.uri().scheme_str(), Some("https"));
        let e = tls.endpoint("http://127.0.0.1:7070").unwrap();
        assert_eq!(e.uri().scheme_str(), Some("https"));
        let plain = ClientOptions::new().endpoint("127.0.0.1:7070").unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let https = ClientOptions::new()
            .endpoint("https://broker:7070")
            .unwrap();
        assert_eq!(https.uri().scheme_str(), Some("https"));
        let debug = format!("{:?}", ClientOptions::new().token("secret"));
        assert!(!debug.contains("secret"), "{debug}");
    }
}
