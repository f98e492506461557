//! The route table: every HTTP route with its method, handler and access class. The router is
//! built from this table only, and each route is wrapped in the guard that authenticates
//! its caller by the route's [`Access`] before the handler runs: a handler receives the
//! caller ([`AuthContext`]) from the guard and cannot be reached without it. The table is
//! public so that tests can call every route with every kind of bad credential.
//!
//! The operator routes are a group of their own ([`ops_routes`]) so they can be served on a
//! separate listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::handler::Handler;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::http::{query_pairs, HttpError};
use super::{api, ops, poll, sse, task, ws};
use crate::auth::AuthContext;
use crate::request::{authenticate, Access};
use crate::server::App;

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET` (and `HEAD`).
    Get,
    /// `POST`.
    Post,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
        }
    }
}

/// What a route is: where, how, for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The path (`{id}` marks a path parameter).
    pub path: &'static str,
    /// The method.
    pub method: Method,
    /// Who may call it.
    pub access: Access,
    /// The transport name the authorizer sees (`ws`, `sse`, `poll`, `http`, `task`, `api`,
    /// `ops`).
    pub transport: &'static str,
}

/// A route and its handler.
pub(crate) struct Entry {
    /// The route.
    pub route: Route,
    handler: MethodRouter<Arc<App>>,
}

fn entry<H, T>(
    path: &'static str,
    method: Method,
    access: Access,
    transport: &'static str,
    handler: H,
) -> Entry
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    Entry {
        route: Route {
            path,
            method,
            access,
            transport,
        },
        handler: on(method.filter(), handler),
    }
}

/// The client and back-end routes.
pub(crate) fn app_routes() -> Vec<Entry> {
    use Access::{Backend, Client, Public, Socket, Task};
    use Method::{Get, Post};
    vec![
        entry("/ws", Get, Socket, "ws", ws::upgrade),
        entry("/sse", Get, Client, "sse", sse::sse),
        entry("/poll", Get, Client, "poll", poll::poll),
        entry("/publish", Post, Client, "http", api::publish_api),
        entry("/task/{id}", Get, Task, "task", task::task),
        entry("/api/publish", Post, Backend, "api", api::publish_api),
        entry("/api/history", Get, Backend, "api", api::history),
        entry("/api/presence", Get, Backend, "api", api::presence),
        entry("/healthz", Get, Public, "ops", ops::healthz),
    ]
}

/// The operator routes.
pub(crate) fn ops_routes() -> Vec<Entry> {
    use Access::{Ops, Public};
    use Method::Get;
    vec![
        entry("/readyz", Get, Public, "ops", ops::readyz),
        entry("/metrics", Get, Ops, "ops", ops::metrics),
        entry("/status", Get, Ops, "ops", ops::status_page),
        entry("/status.json", Get, Ops, "ops", ops::status_json),
    ]
}

/// The admin listener's routes (`--admin-listen`): `/healthz` and the operator routes, open to
/// whoever reaches that listener.
pub(crate) fn admin_routes() -> Vec<Entry> {
    let health = entry("/healthz", Method::Get, Access::Public, "ops", ops::healthz);
    let mut entries = vec![health];
    entries.extend(ops_routes().into_iter().map(|mut e| {
        e.route.access = Access::Public;
        e
    }));
    entries
}

/// Every route the public listener serves (without an admin listener).
pub fn routes() -> Vec<Route> {
    app_routes()
        .into_iter()
        .chain(ops_routes())
        .map(|e| e.route)
        .collect()
}

/// A router of `entries`, each behind its guard.
pub(crate) fn build(app: &Arc<App>, entries: Vec<Entry>) -> Router<Arc<App>> {
    let mut router = Router::new();
    for Entry { route, handler } in entries {
        let guarded = handler.route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), route),
            guard,
        ));
        router = router.route(route.path, guarded);
    }
    router
}

/// Authenticates the caller of `route` and hands it to the handler as an
/// `Extension<AuthContext>`; refuses the call (`401 unauthorized`, `403 forbidden`) when the
/// route's access class is not met.
async fn guard(
    State((app, route)): State<(Arc<App>, Route)>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let query = query_pairs(request.uri().query());
    match authenticate(
        &app.core,
        route.access,
        route.transport,
        request.headers(),
        &query,
        peer,
    ) {
        Ok(caller) => {
            request.extensions_mut().insert::<AuthContext>(caller);
            next.run(request).await
        }
        Err(err) if route.transport == "poll" => poll::error_response(&app, &query, err.into()),
        Err(err) => HttpError::from(err).into_response(),
    }
}
