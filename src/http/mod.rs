//! The HTTP API, the WebSocket upgrade and the embedded web page.
//!
//! Every response carries security headers. API errors are JSON
//! `{"error":{"code","message"}}` with the matching status. A request that
//! authenticates with the session cookie and changes state must carry an
//! allowed Origin; bearer-token clients need none.

mod admin;
mod presence;
pub mod fuzz;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::auth::{request_token, Credential};
use crate::error::{ApiError, ErrorCode};
use crate::hub::{message_json, Identity, Reply, SendOutcome};
use crate::ids::{now_ms, Id};
use crate::protocol::{page_limit, UserView};
use crate::server::App;
use crate::throttle::LoginOutcome;

/// Maximum long-poll wait a client may request, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// Content-Security-Policy of every response: scripts, styles and
/// connections only from this origin, and no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

type Body = Full<Bytes>;

/// Handles one HTTP request.
/// Handles one HTTP request. API requests first take a permit from their
/// concurrency pool, and get 503 when it is exhausted.
pub async fn handle(app: Arc<App>, peer: SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = request.uri();
    let class = crate::limits::classify(request.method(), uri.path(), uri.query());
    let mut response = match app.limits.admit_request(class) {
        Ok(_permit) => match route(&app, peer, request).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        },
        Err(error) => error_response(&error),
    };
    add_security_headers(response.headers_mut());
    Ok(response)
}

/// Builds the response to a connection rejected by a connection limit: the
/// error with the security headers every response carries.
pub(crate) fn refusal_response(error: &ApiError) -> Response<Body> {
    let mut response = error_response(error);
    add_security_headers(response.headers_mut());
    response
}

async fn route(app: &Arc<App>, peer: SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();

    if let (&Method::GET, [file]) = (&method, segments.as_slice()) {
        if let Some(response) = crate::assets::response(file) {
            return Ok(response);
        }
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["index.html"]) => Ok(crate::assets::index_response()),
        (&Method::GET, ["healthz"]) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, ["metrics"]) => crate::metrics::respond(app, peer, request.headers()),
        (&Method::GET, ["ws"]) => upgrade(app, peer, request),
        (&Method::POST, ["api", "register"]) => register(app, peer, request).await,
        (&Method::POST, ["api", "session"]) => login(app, peer, request).await,
        (&Method::DELETE, ["api", "session"]) => logout(app, request).await,
        (&Method::GET, ["api", "me"]) => me(app, &request),
        (&Method::GET, ["api", "layout"]) => layout(app, &request),
        (&Method::GET, ["api", "presence"]) => presence::online(app, &request),
        (&Method::PUT, ["api", "presence"]) => presence::set(app, request).await,
        (&Method::GET, ["api", "channels", channel, "messages"]) => {
            let channel = parse_id(channel)?;
            poll_messages(app, request, channel).await
        }
        (&Method::POST, ["api", "channels", channel, "messages"]) => {
            let channel = parse_id(channel)?;
            post_message(app, request, channel).await
        }
        (&Method::PATCH, ["api", "messages", id]) => {
            let id = parse_id(id)?;
            edit_message(app, request, id).await
        }
        (&Method::DELETE, ["api", "messages", id]) => {
            let id = parse_id(id)?;
            delete_message(app, request, id).await
        }
        (_, ["api", "categories", ..] | ["api", "channels", ..] | ["api", "layout", "move"] | ["api", "users", ..]) => {
            admin::route(app, request, &method, &segments).await
        }
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    }
}

/// Authenticates a request. State-changing requests that use the cookie
/// must also come from an allowed Origin.
pub(crate) fn authenticate(app: &App, request: &Request<Incoming>) -> Result<(Identity, String), ApiError> {
    let Some((token, credential)) = request_token(request.headers()) else {
        return Err(ApiError::unauthorized());
    };
    let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if credential == Credential::Cookie && changes_state && !app.auth.origin_allowed(request.headers()) {
        return Err(ApiError::forbidden("origin is not allowed"));
    }
    match app.auth.authenticate(&token)? {
        Some(user) => Ok((user, token)),
        None => Err(ApiError::new(ErrorCode::Unauthorized, "session is invalid or expired: log in again")),
    }
}

/// Rejects a request whose Origin header is present but not allowed.
fn check_origin_if_present(app: &App, request: &Request<Incoming>) -> Result<(), ApiError> {
    if request.headers().contains_key(header::ORIGIN) && !app.auth.origin_allowed(request.headers()) {
        return Err(ApiError::forbidden("origin is not allowed"));
    }
    Ok(())
}

fn upgrade(app: &Arc<App>, peer: SocketAddr, mut request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return Err(ApiError::bad_request("expected a WebSocket upgrade request"));
    }
    // hyper upgrades only HTTP/1.1 connections, so a 101 response to
    // HTTP/1.0 would be followed by a closed connection.
    if request.version() != hyper::Version::HTTP_11 {
        return Err(ApiError::bad_request("a WebSocket upgrade requires HTTP/1.1"));
    }
    let token = request_token(request.headers());
    if let Some((_, Credential::Cookie)) = token {
        if !app.auth.origin_allowed(request.headers()) {
            return Err(ApiError::forbidden("origin is not allowed"));
        }
    }
    let user = match token {
        None => Err("authentication required"),
        Some((token, _)) => app.auth.authenticate(&token)?.ok_or("session is invalid or expired"),
    };
    // A refused client is closed with 1008 right after the upgrade and needs no slot.
    let socket_slot = match &user {
        Ok(_) => {
            let client = app.limits.client_address(peer, request.headers());
            Some(app.limits.admit_socket(client)?)
        }
        Err(_) => None,
    };

    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)
        .map_err(|error| ApiError::bad_request(format!("invalid WebSocket upgrade: {error}")))?;
    let guard = app.track_task();
    tokio::spawn({
        let app = app.clone();
        async move {
            crate::session::run(app, upgrade, user, peer).await;
            drop(socket_slot);
            drop(guard);
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    setup_code: Option<String>,
}

/// Registers an account. Each attempt, valid or not, takes a token of the
/// client address's registration bucket.
async fn register(app: &App, peer: SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    check_origin_if_present(app, &request)?;
    let client = app.limits.client_address(peer, request.headers());
    app.throttle.take_registration(client.ip, now_ms())?;
    let body: RegisterBody = read_json(app, request).await?;
    let _hash = app.limits.hash_permit().await?;
    let user = app
        .auth
        .register(&body.username, &body.password, body.setup_code.as_deref())
        .await?;
    tracing::info!(user = user.id, role = ?user.role, "user registered");
    Ok(json_response(StatusCode::CREATED, &json!({"user": UserView::of(&user)})))
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// Logs in, subject to the failed-login throttle of the username and the
/// client address.
async fn login(app: &App, peer: SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    check_origin_if_present(app, &request)?;
    let client = app.limits.client_address(peer, request.headers());
    let body: LoginBody = read_json(app, request).await?;
    let attempt = app.throttle.begin_login(&body.username, client.ip, now_ms())?;
    let result = match app.limits.hash_permit().await {
        Ok(_hash) => app.auth.login(&body.username, &body.password).await,
        Err(error) => Err(error),
    };
    let outcome = match &result {
        Ok(_) => LoginOutcome::Succeeded,
        Err(error) if error.code == ErrorCode::Unauthorized => LoginOutcome::Failed,
        // A disabled account: the password matched.
        Err(error) if error.code == ErrorCode::Forbidden => LoginOutcome::Succeeded,
        Err(_) => LoginOutcome::Aborted,
    };
    app.throttle.finish_login(attempt, outcome);
    let (user, token) = result?;
    let mut response = json_response(
        StatusCode::OK,
        &json!({"user": UserView::of(&user), "token": token}),
    );
    set_cookie(&mut response, &app.auth.session_cookie(Some(&token)));
    Ok(response)
}

async fn logout(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (_, token) = authenticate(app, &request)?;
    app.auth.logout(&token).await?;
    let mut response = json_response(StatusCode::OK, &json!({}));
    set_cookie(&mut response, &app.auth.session_cookie(None));
    Ok(response)
}

fn me(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, request)?;
    let user = app.accounts.get(user.id).ok_or_else(ApiError::unauthorized)?;
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&user)})))
}

fn layout(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, request)?;
    Ok(json_response(StatusCode::OK, &app.hub.layout_for(&user)))
}

/// Query of GET /api/channels/{id}/messages.
#[derive(Debug, Default, Deserialize)]
struct PollQuery {
    after: Option<Id>,
    before: Option<Id>,
    limit: Option<usize>,
    wait: Option<u64>,
}

async fn poll_messages(app: &App, request: Request<Incoming>, channel: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let query: PollQuery = parse_query(request.uri().query())?;
    let limit = page_limit(query.limit);
    let (messages, has_more) = match query.after {
        Some(after) => {
            let wait = query.wait.unwrap_or(0);
            if wait > MAX_WAIT_SECS {
                return Err(ApiError::bad_request(format!("wait is {wait}, expected 0 to {MAX_WAIT_SECS} seconds")));
            }
            // A long poll keeps its user online, from its start and again
            // from its end.
            let long_poll = query.wait.is_some();
            if long_poll {
                app.presence.poll_seen(user.id);
            }
            let changes = app
                .hub
                .changes_after(&user, channel, after.0, limit, Duration::from_secs(wait), app.shutdown.clone())
                .await?;
            if long_poll {
                app.presence.poll_seen(user.id);
            }
            changes
        }
        None => app.hub.history(&user, channel, query.before.map(|id| id.0), limit)?,
    };
    let messages: Vec<_> = messages.iter().map(|message| message_json(message)).collect();
    Ok(json_response(StatusCode::OK, &json!({"messages": messages, "has_more": has_more})))
}

#[derive(Deserialize)]
struct PostBody {
    content: String,
    nonce: String,
}

async fn post_message(app: &App, request: Request<Incoming>, channel: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: PostBody = read_json(app, request).await?;
    let (sender, durable) = oneshot::channel();
    let outcome = app.hub.send(&user, channel, &body.content, &body.nonce, Reply::Http(sender))?;
    wait_durable(durable).await?;
    let (status, message) = match outcome {
        SendOutcome::Created(message) => (StatusCode::CREATED, message),
        SendOutcome::Duplicate(message) => (StatusCode::OK, message),
    };
    Ok(json_response(status, &json!({"message": message_json(&message)})))
}

#[derive(Deserialize)]
struct EditBody {
    content: String,
}

async fn edit_message(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: EditBody = read_json(app, request).await?;
    let (sender, durable) = oneshot::channel();
    let message = app.hub.edit(&user, id, &body.content, Reply::Http(sender))?;
    wait_durable(durable).await?;
    Ok(json_response(StatusCode::OK, &json!({"message": message_json(&message)})))
}

async fn delete_message(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let (sender, durable) = oneshot::channel();
    let message = app.hub.delete(&user, id, Reply::Http(sender))?;
    wait_durable(durable).await?;
    Ok(json_response(StatusCode::OK, &json!({"message": message_json(&message)})))
}

async fn wait_durable(durable: oneshot::Receiver<Result<(), ApiError>>) -> Result<(), ApiError> {
    durable.await.unwrap_or_else(|_| Err(ApiError::unavailable()))
}

/// Reads a JSON body of at most `--max-frame-bytes` within
/// `--body-read-timeout-ms`, so a client that stalls mid-body cannot hold
/// a connection and an API permit.
pub(crate) async fn read_json<T: DeserializeOwned>(app: &App, request: Request<Incoming>) -> Result<T, ApiError> {
    let limit = app.config.max_frame_bytes;
    let timeout = app.config.body_read_timeout;
    // A declared length over the limit is refused at once, not after the
    // body has arrived or timed out.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("request body exceeds {limit} bytes")));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(request.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                format!("request body not received within {} ms: send it without pauses", timeout.as_millis()),
            )
        })?;
    let body = collected
        .map_err(|error| {
            if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::new(ErrorCode::TooLarge, format!("request body exceeds {limit} bytes"))
            } else {
                ApiError::bad_request(format!("failed to read request body: {error}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {}", crate::protocol::describe_json_error(&error))))
}

fn parse_query<T: DeserializeOwned + Default>(query: Option<&str>) -> Result<T, ApiError> {
    let Some(query) = query else { return Ok(T::default()) };
    let mut map = serde_json::Map::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = match crate::ids::parse_decimal(value) {
            Some(number) => json!(number),
            None => json!(value),
        };
        map.insert(key.to_string(), value);
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|error| ApiError::bad_request(format!("invalid query: {}", crate::protocol::describe_json_error(&error))))
}

pub(crate) fn parse_id(text: &str) -> Result<u64, ApiError> {
    crate::ids::parse_decimal(text)
        .ok_or_else(|| ApiError::bad_request(format!("invalid id {text:?}: expected a decimal number")))
}

/// A JSON response with `Cache-Control: no-store`.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("responses serialize to JSON");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut body = json!({"error": {"code": error.code, "message": error.message}});
    let mut response_retry = None;
    if let Some(retry_after_ms) = error.retry_after_ms {
        body["error"]["retry_after_ms"] = json!(retry_after_ms);
        response_retry = Some(retry_after_ms.div_ceil(1000).max(1));
    }
    let mut response = json_response(error.code.status(), &body);
    if let Some(seconds) = response_retry {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

fn add_security_headers(headers: &mut hyper::HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
