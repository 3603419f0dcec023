//! Every route of the HTTP listener, in one table: the router is built from
//! it, and a test checks it against docs/openapi.yaml both ways.

use std::sync::Arc;

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::{State, admin, assets, broker, live};

/// One route: method, path (axum's syntax, `{id}` for a parameter, which is
/// OpenAPI's too) and handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: MethodRouter<Arc<State>>,
}

fn route(method: &'static str, path: &'static str, handler: MethodRouter<Arc<State>>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route.
pub fn table() -> Vec<Route> {
    vec![
        // Open: probes and the login page.
        route("get", "/healthz", get(assets::healthz)),
        route("post", "/login", post(assets::login)),
        route("post", "/logout", post(assets::logout)),
        // The dashboard (a token of role client or admin).
        route("get", "/", get(assets::index)),
        route("get", "/assets/{file}", get(assets::file)),
        // Operations (role admin).
        route("get", "/metrics", get(assets::metrics)),
        // Broker (role client or admin).
        route("get", "/api/v1/whoami", get(assets::whoami)),
        route("post", "/api/v1/chains", post(broker::submit)),
        route("get", "/api/v1/chains", get(broker::list)),
        route("post", "/api/v1/chains/batch", post(broker::submit_many)),
        route("get", "/api/v1/chains/{id}", get(broker::get)),
        route(
            "get",
            "/api/v1/chains/{id}/results/{task_id}",
            get(broker::step_result),
        ),
        route("get", "/api/v1/chains/{id}/events", get(broker::events)),
        route("post", "/api/v1/chains/{id}/cancel", post(broker::cancel)),
        // Admin (role admin).
        route("post", "/api/v1/chains/{id}/requeue", post(admin::requeue)),
        route("get", "/api/v1/queues", get(admin::queues)),
        route("post", "/api/v1/queues/{queue}/pause", post(admin::pause)),
        route("post", "/api/v1/queues/{queue}/resume", post(admin::resume)),
        route("post", "/api/v1/queues/{queue}/purge", post(admin::purge)),
        route("get", "/api/v1/workers", get(admin::workers)),
        route("post", "/api/v1/workers/{worker}/drain", post(admin::drain)),
        route("get", "/api/v1/throttles", get(admin::throttles)),
        route("put", "/api/v1/throttles/limit", put(admin::set_limit)),
        route("put", "/api/v1/throttles/rate", put(admin::set_rate)),
        route("get", "/api/v1/schedules", get(admin::schedules)),
        route("put", "/api/v1/schedules", put(admin::put_schedule)),
        route(
            "post",
            "/api/v1/schedules/{name}/pause",
            post(admin::pause_schedule),
        ),
        route(
            "post",
            "/api/v1/schedules/{name}/resume",
            post(admin::resume_schedule),
        ),
        route(
            "delete",
            "/api/v1/schedules/{name}",
            delete(admin::remove_schedule),
        ),
        route("get", "/api/v1/dead", get(admin::dead)),
        route("post", "/api/v1/dead/requeue", post(admin::requeue_many)),
        route("get", "/api/v1/overview", get(live::overview)),
        route("get", "/api/v1/overview/events", get(live::events)),
    ]
}

/// The router of [`table`], answering unknown paths with a JSON
/// `NOT_FOUND` that names the path.
pub fn router(state: Arc<State>) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .fallback(assets::not_found)
        .layer(axum::middleware::map_response(assets::security_headers))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path) of every operation of docs/openapi.yaml: the paths
    /// are the keys indented two spaces under `paths:`, the methods the
    /// keys indented four spaces under them.
    fn openapi_operations() -> Vec<(String, String)> {
        let text = include_str!("../../../docs/openapi.yaml");
        let mut ops = Vec::new();
        let mut in_paths = false;
        let mut path = None;
        for line in text.lines() {
            if !line.starts_with(' ') && !line.is_empty() {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
            } else if let Some(m) = line.strip_prefix("    ")
                && !m.starts_with(' ')
                && let Some(method) = m.trim_end().strip_suffix(':')
                && ["get", "post", "put", "delete", "patch"].contains(&method)
                && let Some(p) = &path
            {
                ops.push((method.to_owned(), p.trim_matches('"').to_owned()));
            }
        }
        ops
    }

    #[test]
    fn every_route_is_in_the_openapi_file_and_back() {
        let routes: Vec<(String, String)> = table()
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        let documented = openapi_operations();
        assert!(
            !documented.is_empty(),
            "no operation found in docs/openapi.yaml"
        );
        for r in &routes {
            assert!(
                documented.contains(r),
                "route {} {} is not in docs/openapi.yaml",
                r.0,
                r.1
            );
        }
        for d in &documented {
            assert!(
                routes.contains(d),
                "docs/openapi.yaml documents {} {}, which the router does not serve",
                d.0,
                d.1
            );
        }
    }
}
