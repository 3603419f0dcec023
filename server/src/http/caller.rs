//! Who calls the HTTP listener: the same tokens and roles as gRPC.
//!
//! A request carries its token as `authorization: Bearer <secret>`, or,
//! from the dashboard in a browser (which cannot add a header to a page
//! load or an `EventSource`), in the `baton_token` cookie that `POST
//! /login` sets (HttpOnly, SameSite=Strict, Secure under TLS). Either way
//! the token goes through the gRPC [`Gate`] of the service the route
//! mirrors: Broker routes admit clients and admins, Admin routes and
//! `/metrics` admins only. With authentication off everyone is an admin.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use super::State;
use super::error::ApiError;
use crate::auth::{Auth, Caller, Gate, Service};

/// The cookie the dashboard's login sets.
pub const TOKEN_COOKIE: &str = "baton_token";

/// A caller admitted to the Broker routes (role client or admin).
pub struct BrokerCaller(pub Caller);

/// A caller admitted to the Admin routes and `/metrics` (role admin).
pub struct AdminCaller(pub Caller);

/// A caller admitted to the Broker routes, as a tonic request carrying it,
/// ready for the services of `crate::api`.
pub fn request<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

/// The token's secret in the `baton_token` cookie, if any.
fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Admits the request's caller to `service` as the gRPC gate would.
///
/// # Errors
/// The gate's `UNAUTHENTICATED` or `PERMISSION_DENIED`, word for word.
pub fn admit(auth: &Auth, headers: &HeaderMap, service: Service) -> Result<Caller, ApiError> {
    let mut metadata = HeaderMap::new();
    if let Some(value) = headers.get(AUTHORIZATION) {
        metadata.insert(AUTHORIZATION, value.clone());
    } else if let Some(secret) = cookie_secret(headers)
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {secret}"))
    {
        metadata.insert(AUTHORIZATION, value);
    }
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(metadata),
        tonic::Extensions::default(),
        (),
    );
    Gate::new(auth.clone(), service, false)
        .admit(&request)
        .map_err(ApiError::from)
}

impl FromRequestParts<Arc<State>> for BrokerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<State>,
    ) -> Result<Self, Self::Rejection> {
        admit(&state.auth, &parts.headers, Service::Broker).map(BrokerCaller)
    }
}

impl FromRequestParts<Arc<State>> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<State>,
    ) -> Result<Self, Self::Rejection> {
        admit(&state.auth, &parts.headers, Service::Admin).map(AdminCaller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Token, Tokens, digest};

    fn tokens() -> Auth {
        let token = |name: &str, role, secret: &str| Token {
            name: name.into(),
            role,
            queues: None,
            sha256: digest(secret),
        };
        Auth::Tokens(Arc::new(Tokens::new(vec![
            token("ops", Role::Admin, "admin-secret"),
            token("app", Role::Client, "client-secret"),
        ])))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_header_or_cookie_with_the_grpc_roles() {
        let auth = tokens();
        let admin = admit(
            &auth,
            &headers(&[("authorization", "Bearer admin-secret")]),
            Service::Admin,
        )
        .unwrap();
        assert_eq!(admin.name, "ops");
        let client = admit(
            &auth,
            &headers(&[("cookie", "theme=dark; baton_token=client-secret")]),
            Service::Broker,
        )
        .unwrap();
        assert_eq!(client.role, Role::Client);
        let refused = admit(
            &auth,
            &headers(&[("cookie", "baton_token=client-secret")]),
            Service::Admin,
        )
        .unwrap_err();
        assert_eq!(refused.code, "PERMISSION_DENIED");
        assert_eq!(
            refused.message,
            "token \"app\" has role client; baton.v1.Admin needs role admin"
        );
        let none = admit(&auth, &HeaderMap::new(), Service::Broker).unwrap_err();
        assert_eq!(none.code, "UNAUTHENTICATED");
        assert!(admit(&Auth::Off, &HeaderMap::new(), Service::Admin).is_ok());
    }
}
