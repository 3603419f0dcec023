//! Who may call the broker, and over what: bearer tokens with roles, and the
//! TLS settings of the listener.
//!
//! Why it lives apart from [`api`](crate::api): authentication is decided
//! once per call, before any service runs, by a [`Gate`] (a tonic
//! interceptor) in front of each service. The gate turns the request's
//! `authorization: Bearer <secret>` into a [`Caller`] and puts it in the
//! request's extensions; the service impls only ask the caller questions
//! ("may it read this chain?", "may it serve this queue?"). Health and
//! reflection have no gate.
//!
//! Roles:
//! - `client`: submit chains; get, watch and cancel the chains it submitted.
//! - `worker`: open the worker stream, for the queues its token lists.
//! - `admin`: everything a client may do, on every chain, plus the Admin
//!   service (inspection, live limits). Not the worker stream: a worker
//!   token and an admin token are kept apart on purpose.
//!
//! Tokens are kept hashed: the token file holds the SHA-256 of each secret,
//! never the secret. A presented secret is hashed and compared with every
//! entry in constant time ([`subtle`]), so neither the comparison nor the
//! entry that matched shows in the timing. Secrets are 32 random bytes, so
//! a plain (unsalted) SHA-256 is enough: there is nothing to brute-force.
//!
//! A chain belongs to the token that submitted it (its `owner`, the
//! token's name). A client asking for a chain of another owner gets
//! `NOT_FOUND`, exactly as for a chain that does not exist, so chain ids do
//! not leak across clients; idempotency and unique keys are scoped to the
//! owner for the same reason.
//!
//! With [`Auth::Off`] every call is allowed (as an admin that may also run
//! workers) and chains have no owner: for local development only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::{ChainRecord, ChainSpec};

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Submit chains and follow or cancel its own.
    Client,
    /// Open the worker stream for the queues of its token.
    Worker,
    /// Inspection, live limits, and every chain.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role {other:?} is not one of \"client\", \"worker\", \"admin\""
            )),
        }
    }
}

/// The queue pattern that lets a worker token serve every queue.
pub const ANY_QUEUE: &str = "*";

/// One entry of the token table.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// 1..=64 characters of `[A-Za-z0-9_.-]`; unique in its table. Becomes
    /// the owner of the chains the token submits.
    pub name: String,
    pub role: Role,
    /// For a worker token: the queues it may serve (`None` = every queue,
    /// written `["*"]`). Always `None` for other roles.
    pub queues: Option<Vec<String>>,
    /// SHA-256 of the secret.
    pub sha256: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is not a secret, but it has no business in logs either.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Why a token table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid; `message` names the line and the key.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The token table: every token the broker accepts, hashed.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// The token file as written (see [`Tokens::parse`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: toml::Spanned<String>,
    role: toml::Spanned<String>,
    sha256: toml::Spanned<String>,
    #[serde(default)]
    queues: Option<toml::Spanned<Vec<String>>>,
}

impl Tokens {
    /// Reads and checks a token file (see [`Tokens::parse`]).
    ///
    /// # Errors
    /// [`Error::Read`] when the file cannot be read, [`Error::Invalid`]
    /// naming the line and key of the first problem.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a token file: TOML with one `[[token]]` table per token.
    ///
    /// ```toml
    /// [[token]]
    /// name = "ci-submitter"
    /// role = "client"            # client | worker | admin
    /// sha256 = "<64 hex digits>" # `baton token hash` or `baton token new`
    ///
    /// [[token]]
    /// name = "gpu-1"
    /// role = "worker"
    /// sha256 = "..."
    /// queues = ["general", "heavy"]  # required for workers; ["*"] = any
    /// ```
    ///
    /// `origin` names the file in error messages.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the line and the key of the first problem:
    /// TOML syntax, an unknown key, a bad name, role, digest or queue, a
    /// duplicate name or digest, queues on a non-worker token or none on a
    /// worker token.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let line = |span: std::ops::Range<usize>| {
            text.get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1
        };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut tokens: Vec<Token> = Vec::with_capacity(file.token.len());
        let mut lines = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let at = line(entry.span());
            let entry = entry.into_inner();
            let err = |span, key: &str, what: String| {
                invalid(format!("line {}: token {key}: {what}", line(span)))
            };
            let name = entry.name.get_ref();
            if !is_token_name(name) {
                return Err(err(
                    entry.name.span(),
                    "name",
                    format!("{name:?} must be 1 to 64 characters of A-Z a-z 0-9 _ . -"),
                ));
            }
            let role: Role = entry
                .role
                .get_ref()
                .parse()
                .map_err(|m| err(entry.role.span(), "role", m))?;
            let sha256 = parse_digest(entry.sha256.get_ref()).ok_or_else(|| {
                err(
                    entry.sha256.span(),
                    "sha256",
                    "must be 64 hex digits (the SHA-256 of the secret; see `baton token hash`)"
                        .into(),
                )
            })?;
            let queues = match (role, entry.queues) {
                (Role::Worker, None) => {
                    return Err(invalid(format!(
                        "line {at}: token {name:?}: a worker token needs `queues` \
                         (the queues it may serve; [\"*\"] for every queue)"
                    )));
                }
                (Role::Worker, Some(queues)) => {
                    let span = queues.span();
                    let queues = queues.into_inner();
                    if queues.is_empty() {
                        return Err(err(span, "queues", "is empty".into()));
                    }
                    for q in &queues {
                        if q != ANY_QUEUE && !is_queue_name(q) {
                            return Err(err(
                                span,
                                "queues",
                                format!(
                                    "{q:?} is not a queue name (1 to 64 characters of \
                                     A-Z a-z 0-9 _ . : -) nor \"*\""
                                ),
                            ));
                        }
                    }
                    (!queues.iter().any(|q| q == ANY_QUEUE)).then_some(queues)
                }
                (_, Some(queues)) => {
                    return Err(err(
                        queues.span(),
                        "queues",
                        format!("only worker tokens have queues, and {name:?} is a {role}"),
                    ));
                }
                (_, None) => None,
            };
            if let Some(i) = tokens.iter().position(|t| t.name == *name) {
                return Err(invalid(format!(
                    "line {at}: token name {name:?} is already used on line {}",
                    lines[i]
                )));
            }
            if let Some(i) = tokens.iter().position(|t| t.sha256 == sha256) {
                return Err(invalid(format!(
                    "line {at}: token {name:?} has the same sha256 as {:?} on line {} \
                     (one secret, one token)",
                    tokens[i].name, lines[i]
                )));
            }
            lines.push(at);
            tokens.push(Token {
                name: name.clone(),
                role,
                queues,
                sha256,
            });
        }
        Ok(Tokens { tokens })
    }

    /// A table of the given tokens (tests and embedders).
    pub fn new(tokens: Vec<Token>) -> Self {
        Tokens { tokens }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose secret is `secret`, if any. Every entry is compared
    /// in constant time and the match is selected without a branch, so the
    /// time taken does not depend on which entry (if any) matched.
    pub fn verify(&self, secret: &str) -> Option<&Token> {
        let presented = digest(secret);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, token) in self.tokens.iter().enumerate() {
            let matched = token.sha256.ct_eq(&presented);
            index.conditional_assign(&u64::try_from(i).unwrap_or(u64::MAX), matched);
            found |= matched;
        }
        let index = usize::try_from(index).ok()?;
        bool::from(found).then(|| &self.tokens[index])
    }
}

fn is_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn is_queue_name(queue: &str) -> bool {
    (1..=crate::api::convert::MAX_QUEUE_LEN).contains(&queue.len())
        && queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// SHA-256 of a secret, as the token file stores it.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A fresh secret: `baton_` and 32 random bytes from the OS, in hex. The
/// prefix lets secret scanners and people recognise one.
///
/// # Errors
/// When the operating system has no randomness to give.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("baton_{}", hex(&bytes)))
}

/// The `[[token]]` table of a token file for `secret`, ready to paste.
pub fn toml_entry(name: &str, role: Role, queues: &[String], secret: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!(
        "[[token]]\nname = {}\nrole = {}\nsha256 = {}\n",
        quote(name),
        quote(role.as_str()),
        quote(&hex(&digest(secret)))
    );
    if role == Role::Worker {
        let list: Vec<String> = queues.iter().map(|q| quote(q)).collect();
        out.push_str(&format!("queues = [{}]\n", list.join(", ")));
    }
    out
}

/// How the broker authenticates callers.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// Every call is allowed, with no owner on chains. Local development
    /// only: the broker logs a warning when it starts this way.
    #[default]
    Off,
    /// Every call needs a token of the table, with the right role.
    Tokens(Arc<Tokens>),
}

/// Whom a request comes from, once its gate let it in. In the request's
/// extensions for every call of a gated service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; empty when authentication is off.
    pub name: String,
    pub role: Role,
    /// Queues a worker may serve; `None` = any.
    queues: Option<Vec<String>>,
    /// Authentication is off: everything is allowed.
    anyone: bool,
}

impl Caller {
    /// The caller of every request when authentication is off.
    pub fn anyone() -> Self {
        Caller {
            name: String::new(),
            role: Role::Admin,
            queues: None,
            anyone: true,
        }
    }

    fn of_token(token: &Token) -> Self {
        Caller {
            name: token.name.clone(),
            role: token.role,
            queues: token.queues.clone(),
            anyone: false,
        }
    }

    /// The caller of a request that passed a [`Gate`].
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when no gate saw the request (fail closed).
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
    }

    /// Whether this caller may see and cancel every chain.
    pub fn sees_all(&self) -> bool {
        self.anyone || self.role == Role::Admin
    }

    /// Marks a submission as this caller's: the chain's owner is the
    /// token's name, and its idempotency and unique keys are scoped to it,
    /// so one client's keys never match (and reveal) another's chain.
    pub fn claim(&self, spec: &mut ChainSpec) {
        if self.anyone {
            return;
        }
        spec.owner = self.name.clone();
        // Token names have no ':', so "name:key" cannot collide.
        for key in [&mut spec.idempotency_key, &mut spec.unique_key] {
            if !key.is_empty() {
                *key = format!("{}:{key}", self.name);
            }
        }
    }

    /// Marks a schedule as this caller's: its chains are, and their keys
    /// are scoped as [`claim`](Self::claim) scopes a submission's.
    pub fn claim_schedule(&self, schedule: &mut crate::domain::ScheduleRecord) {
        if self.anyone {
            return;
        }
        schedule.owner = self.name.clone();
        if !schedule.unique_key.is_empty() {
            schedule.unique_key = format!("{}:{}", self.name, schedule.unique_key);
        }
    }

    /// Lets a caller at a chain it may see.
    ///
    /// # Errors
    /// `NOT_FOUND`, worded as for an unknown chain, when the chain belongs
    /// to someone else: a client learns nothing about others' chains.
    pub fn check_sees(&self, chain: &ChainRecord) -> Result<(), Status> {
        if self.sees_all() || chain.owner == self.name {
            Ok(())
        } else {
            tracing::debug!(caller = %self.name, chain.id = %chain.id, "chain of another owner");
            Err(Status::not_found(format!("chain {} not found", chain.id)))
        }
    }

    /// Lets a worker serve the queues of its Hello.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` naming the first queue its token does not list.
    pub fn check_queues(&self, queues: &[String]) -> Result<(), Status> {
        let Some(allowed) = &self.queues else {
            return Ok(());
        };
        match queues.iter().find(|q| !allowed.contains(q)) {
            None => Ok(()),
            Some(q) => Err(Status::permission_denied(format!(
                "token {:?} may not serve queue {q:?} (it may serve: {})",
                self.name,
                allowed.join(", ")
            ))),
        }
    }
}

/// The gated services, with the roles each admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `baton.v1.Broker`: clients and admins.
    Broker,
    /// `baton.v1.Worker`: workers.
    Worker,
    /// `baton.v1.Admin`: admins.
    Admin,
}

impl Service {
    fn admits(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Service::Broker, Role::Client | Role::Admin)
                | (Service::Worker, Role::Worker)
                | (Service::Admin, Role::Admin)
        )
    }

    fn needs(self) -> &'static str {
        match self {
            Service::Broker => "role client or admin",
            Service::Worker => "role worker",
            Service::Admin => "role admin",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Broker => "baton.v1.Broker",
            Service::Worker => "baton.v1.Worker",
            Service::Admin => "baton.v1.Admin",
        }
    }
}

/// A tonic interceptor in front of one service: authenticates the call,
/// checks the role (and, for workers under mutual TLS, the client
/// certificate) and hands the [`Caller`] to the service.
#[derive(Clone, Debug)]
pub struct Gate {
    auth: Auth,
    service: Service,
    /// Mutual TLS is on: worker streams need a verified client certificate.
    worker_cert: bool,
}

impl Gate {
    pub fn new(auth: Auth, service: Service, worker_cert: bool) -> Self {
        Gate {
            auth,
            service,
            worker_cert,
        }
    }

    /// The caller of a request, or the status that refuses it.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` without a known token (or, for a worker stream
    /// under mutual TLS, without a client certificate), `PERMISSION_DENIED`
    /// when the token's role may not call this service.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if self.service == Service::Worker && self.worker_cert {
            // The TLS handshake already verified any certificate sent
            // against the client CA; here only its presence is checked.
            if request.peer_certs().is_none_or(|certs| certs.is_empty()) {
                return Err(Status::unauthenticated(
                    "worker streams need a client certificate signed by the broker's client CA",
                ));
            }
        }
        let tokens = match &self.auth {
            Auth::Off => return Ok(Caller::anyone()),
            Auth::Tokens(tokens) => tokens,
        };
        let secret = bearer(request)?;
        let Some(token) = tokens.verify(secret) else {
            tracing::debug!(service = self.service.name(), "unknown token");
            return Err(Status::unauthenticated(
                "the token is not known to this broker",
            ));
        };
        if !self.service.admits(token.role) {
            tracing::debug!(token = %token.name, role = %token.role, service = self.service.name(), "role refused");
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; {} needs {}",
                token.name,
                token.role,
                self.service.name(),
                self.service.needs()
            )));
        }
        Ok(Caller::of_token(token))
    }
}

impl Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.admit(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The secret of `authorization: Bearer <secret>`.
fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Err(Status::unauthenticated(
            "this broker requires a token: send metadata `authorization: Bearer <token>`",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => Ok(secret.trim()),
        _ => Err(Status::unauthenticated(
            "the authorization metadata must be `Bearer <token>`",
        )),
    }
}

/// TLS for the broker's listener: PEM bytes, as read from the files.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain (leaf first).
    pub cert_pem: Vec<u8>,
    /// The private key of the leaf certificate.
    pub key_pem: Vec<u8>,
    /// CA certificates that sign client certificates. When set, clients
    /// may present a certificate (it must verify, or the handshake fails)
    /// and worker streams must.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The listener's TLS acceptor for these PEMs: HTTP/2 by ALPN, and with
    /// a client CA, client certificates verified against it. They are
    /// optional at the handshake, so clients with tokens alone still
    /// connect; the worker gate demands the certificate.
    ///
    /// # Errors
    /// A certificate, key or CA that does not parse or does not fit.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        self.acceptor_for(&[b"h2"])
    }

    /// The HTTP listener's acceptor ([`crate::http`]): as
    /// [`acceptor`](Self::acceptor), offering HTTP/1.1 beside HTTP/2, so
    /// clients that speak only HTTP/1.1 over TLS connect too.
    ///
    /// # Errors
    /// As [`acceptor`](Self::acceptor).
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        self.acceptor_for(&[b"h2", b"http/1.1"])
    }

    fn acceptor_for(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, String> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{self, RootCertStore, server::WebPkiClientVerifier};

        let certs = |what: &str, pem: &[u8]| {
            CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{what}: {e}"))
        };
        let chain = certs("the certificate", &self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("the private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certs("the client CA", ca)? {
                    roots.add(cert).map_err(|e| format!("the client CA: {e}"))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "baton_s3cret";

    fn digest_hex(secret: &str) -> String {
        hex(&digest(secret))
    }

    fn file(entries: &[(&str, &str, &str, Option<&str>)]) -> String {
        entries
            .iter()
            .map(|(name, role, secret, queues)| {
                let mut s = format!(
                    "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                    digest_hex(secret)
                );
                if let Some(q) = queues {
                    s.push_str(&format!("queues = {q}\n"));
                }
                s + "\n"
            })
            .collect()
    }

    fn error(text: &str) -> String {
        Tokens::parse(text, "tokens.toml").unwrap_err().to_string()
    }

    #[test]
    fn digest_is_sha256_hex() {
        // echo -n abc | sha256sum
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            parse_digest(&digest_hex("abc").to_uppercase()),
            Some(digest("abc"))
        );
        assert_eq!(parse_digest("abc"), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }

    #[test]
    fn a_good_file_parses_and_verifies() {
        let text = file(&[
            ("ci", "client", "c", None),
            ("w-1", "worker", "w", Some(r#"["general", "heavy"]"#)),
            ("w-any", "worker", "w2", Some(r#"["*"]"#)),
            ("ops", "admin", SECRET, None),
        ]);
        let tokens = Tokens::parse(&text, "tokens.toml").unwrap();
        assert_eq!(tokens.len(), 4);
        let ops = tokens.verify(SECRET).unwrap();
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Admin));
        let w = tokens.verify("w").unwrap();
        assert_eq!(
            w.queues.as_deref(),
            Some(&["general".into(), "heavy".into()][..])
        );
        assert_eq!(tokens.verify("w2").unwrap().queues, None);
        assert!(tokens.verify("nope").is_none());
        assert!(tokens.verify("").is_none());
        // An empty file is a valid, empty table (the CLI refuses to serve it).
        assert!(Tokens::parse("", "x").unwrap().is_empty());
    }

    #[test]
    fn the_last_entry_matches_too() {
        // verify walks every entry: the match may be anywhere.
        let text = file(&[
            ("a", "client", "1", None),
            ("b", "client", "2", None),
            ("c", "client", "3", None),
        ]);
        let tokens = Tokens::parse(&text, "t").unwrap();
        assert_eq!(tokens.verify("3").unwrap().name, "c");
        assert_eq!(tokens.verify("1").unwrap().name, "a");
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let good = file(&[("ci", "client", "c", None)]);
        let e = error(&format!(
            "{good}[[token]]\nname = \"x\"\nrole = \"boss\"\nsha256 = \"{}\"\n",
            digest_hex("x")
        ));
        assert!(e.starts_with("tokens.toml: line 8: token role:"), "{e}");
        assert!(e.contains("\"boss\""), "{e}");

        let e = error("[[token]]\nname = \"a b\"\nrole = \"client\"\nsha256 = \"00\"\n");
        assert!(e.contains("line 2: token name: \"a b\""), "{e}");

        let e = error("[[token]]\nname = \"a\"\nrole = \"client\"\nsha256 = \"00\"\n");
        assert!(
            e.contains("line 4: token sha256: must be 64 hex digits"),
            "{e}"
        );

        let e = error(&format!(
            "[[token]]\nname = \"a\"\nrol = \"client\"\nsha256 = \"{}\"\n",
            digest_hex("a")
        ));
        assert!(
            e.contains("line 3") && e.contains("unknown field `rol`"),
            "{e}"
        );

        let e = error("[[tokens]]\nname = \"a\"\n");
        assert!(e.contains("unknown field `tokens`"), "{e}");

        let e = error("[[token]\n");
        assert!(e.contains("line 1"), "{e}");

        let e = error(&file(&[("w", "worker", "w", None)]));
        assert!(
            e.contains("line 1: token \"w\": a worker token needs `queues`"),
            "{e}"
        );

        let e = error(&file(&[("c", "client", "c", Some(r#"["general"]"#))]));
        assert!(
            e.contains("line 5: token queues: only worker tokens"),
            "{e}"
        );

        let e = error(&file(&[("w", "worker", "w", Some(r#"["ok", "no way"]"#))]));
        assert!(
            e.contains("line 5: token queues: \"no way\" is not a queue name"),
            "{e}"
        );

        let e = error(&file(&[("w", "worker", "w", Some("[]"))]));
        assert!(e.contains("token queues: is empty"), "{e}");

        let e = error(&file(&[
            ("a", "client", "1", None),
            ("a", "admin", "2", None),
        ]));
        assert!(
            e.contains("line 6: token name \"a\" is already used on line 1"),
            "{e}"
        );

        let e = error(&file(&[
            ("a", "client", "1", None),
            ("b", "admin", "1", None),
        ]));
        assert!(
            e.contains("line 6: token \"b\" has the same sha256 as \"a\" on line 1"),
            "{e}"
        );
    }

    #[test]
    fn toml_entry_round_trips() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("baton_") && secret.len() == 6 + 64);
        assert_ne!(secret, new_secret().unwrap());
        let mut text = toml_entry("ci", Role::Client, &[], "c");
        text += &toml_entry(
            "w",
            Role::Worker,
            &["general".into(), "heavy".into()],
            &secret,
        );
        let tokens = Tokens::parse(&text, "t").unwrap();
        assert_eq!(tokens.verify("c").unwrap().name, "ci");
        let w = tokens.verify(&secret).unwrap();
        assert_eq!(w.role, Role::Worker);
        assert_eq!(w.queues.as_ref().unwrap().len(), 2);
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    fn gate(service: Service) -> Gate {
        let text = file(&[
            ("ci", "client", "c", None),
            ("w", "worker", "w", Some(r#"["general"]"#)),
            ("ops", "admin", "a", None),
        ]);
        Gate::new(
            Auth::Tokens(Arc::new(Tokens::parse(&text, "t").unwrap())),
            service,
            false,
        )
    }

    #[test]
    fn the_gate_maps_tokens_to_callers_and_statuses() {
        use tonic::Code;
        let code = |g: &Gate, auth| g.admit(&request(auth)).unwrap_err().code();
        let broker = gate(Service::Broker);
        assert_eq!(code(&broker, None), Code::Unauthenticated);
        assert_eq!(code(&broker, Some("Bearer nope")), Code::Unauthenticated);
        assert_eq!(code(&broker, Some("Basic c")), Code::Unauthenticated);
        assert_eq!(code(&broker, Some("Bearer w")), Code::PermissionDenied);
        assert_eq!(broker.admit(&request(Some("Bearer c"))).unwrap().name, "ci");
        assert_eq!(
            broker.admit(&request(Some("bearer a"))).unwrap().role,
            Role::Admin
        );
        let admin = gate(Service::Admin);
        assert_eq!(code(&admin, Some("Bearer c")), Code::PermissionDenied);
        assert!(admin.admit(&request(Some("Bearer a"))).is_ok());
        let worker = gate(Service::Worker);
        assert_eq!(code(&worker, Some("Bearer a")), Code::PermissionDenied);
        let w = worker.admit(&request(Some("Bearer w"))).unwrap();
        assert!(w.check_queues(&["general".into()]).is_ok());
        let denied = w
            .check_queues(&["general".into(), "heavy".into()])
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("\"heavy\""),
            "{}",
            denied.message()
        );
        // Off: anyone, anything.
        let off = Gate::new(Auth::Off, Service::Admin, false);
        assert!(off.admit(&request(None)).unwrap().sees_all());
    }

    #[test]
    fn a_client_sees_only_its_chains_and_keys_are_scoped() {
        let mut spec = ChainSpec {
            idempotency_key: "k".into(),
            ..ChainSpec::default()
        };
        let ci = gate(Service::Broker)
            .admit(&request(Some("Bearer c")))
            .unwrap();
        ci.claim(&mut spec);
        assert_eq!(
            (spec.owner.as_str(), spec.idempotency_key.as_str()),
            ("ci", "ci:k")
        );
        assert_eq!(spec.unique_key, "");
        let mine = ChainRecord::new(crate::domain::ChainId::from_u128(1), spec, 1);
        assert!(ci.check_sees(&mine).is_ok());
        let theirs = ChainRecord {
            owner: "other".into(),
            ..mine.clone()
        };
        let e = ci.check_sees(&theirs).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::NotFound,
                "chain 00000000-0000-0000-0000-000000000001 not found"
            )
        );
        let ops = gate(Service::Broker)
            .admit(&request(Some("Bearer a")))
            .unwrap();
        assert!(ops.check_sees(&theirs).is_ok());
        assert!(Caller::anyone().check_sees(&theirs).is_ok());
    }
}
