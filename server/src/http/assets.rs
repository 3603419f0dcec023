//! The dashboard's pages, embedded in the binary (`include_str!`: no
//! Node.js at build time, nothing fetched from a network at run time),
//! and the small routes around them: health, login, metrics, whoami.
//!
//! Without a token (and with authentication on) the listener serves
//! `/healthz` and the login form only: the form has no data in it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, Path, State as Shared};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::State;
use super::caller::{AdminCaller, BrokerCaller, TOKEN_COOKIE, admit};
use super::error::ApiError;
use crate::auth::{Auth, Role, Service};

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");

/// The files under `/assets/`: name, content type, text.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
];

fn html(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard, or the login form without a token.
pub async fn index(Shared(state): Shared<Arc<State>>, headers: HeaderMap) -> Response {
    match admit(&state.auth, &headers, Service::Broker) {
        Ok(_) => html(StatusCode::OK, INDEX),
        Err(_) => html(StatusCode::UNAUTHORIZED, LOGIN),
    }
}

/// `GET /assets/{file}`.
pub async fn file(
    Path(name): Path<String>,
    _: BrokerCaller,
) -> Result<impl IntoResponse, ApiError> {
    let (_, content_type, text) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::new(tonic::Code::NotFound, format!("no asset {name:?}")))?;
    Ok((
        [(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "no-cache")],
        *text,
    ))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login` (form field `token`): checks the token and keeps it in an
/// HttpOnly cookie for the dashboard's requests; back to `/`.
pub async fn login(Shared(state): Shared<Arc<State>>, Form(form): Form<LoginForm>) -> Response {
    let secret = form.token.trim();
    let known = match &state.auth {
        Auth::Off => true,
        Auth::Tokens(tokens) => tokens
            .verify(secret)
            .is_some_and(|t| matches!(t.role, Role::Client | Role::Admin)),
    };
    let cookie_safe = secret
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"' && b != b'\\');
    if !known || !cookie_safe || secret.is_empty() {
        return html(StatusCode::UNAUTHORIZED, LOGIN);
    }
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = (StatusCode::SEE_OTHER, [("location", "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// `POST /logout`: forgets the cookie.
pub async fn logout() -> Response {
    let mut response = (StatusCode::SEE_OTHER, [("location", "/")]).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("baton_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
}

/// `GET /healthz`: 200 `SERVING`, or 503 `NOT_SERVING` while the store is
/// in trouble or the broker is stopping (as the gRPC health service).
pub async fn healthz(Shared(state): Shared<Arc<State>>) -> (StatusCode, Json<Health>) {
    let troubled = state.handle.store_fault().borrow().is_some();
    if troubled || state.handle.queues().await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "NOT_SERVING",
            }),
        );
    }
    (StatusCode::OK, Json(Health { status: "SERVING" }))
}

/// `GET /metrics`: the Prometheus metrics (role admin).
pub async fn metrics(
    Shared(state): Shared<Arc<State>>,
    _: AdminCaller,
) -> Result<Response, ApiError> {
    let snapshot = state.handle.snapshot().await?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.handle.metrics().render(&snapshot),
    )
        .into_response())
}

#[derive(Serialize)]
pub struct WhoAmI {
    /// The token's name; empty with authentication off.
    name: String,
    role: &'static str,
    auth: bool,
}

/// `GET /api/v1/whoami`: the caller's token name and role.
pub async fn whoami(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role.as_str(),
        auth: matches!(state.auth, Auth::Tokens(_)),
    })
}

/// Unknown paths: JSON `NOT_FOUND`.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        tonic::Code::NotFound,
        format!("no route {}: see docs/openapi.yaml", uri.path()),
    )
}

/// Headers of every answer: no sniffing, no framing, nothing loaded from
/// anywhere but this broker.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    response
}
