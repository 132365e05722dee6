//! Admin and moderator endpoints: structure changes and user management.
//! Each change is pushed to every connected client as it happens.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{authenticate, json_response, parse_id, read_json, Body};
use crate::accounts::UserPatch;
use crate::error::ApiError;
use crate::ids::Id;
use crate::layout::{self, ChannelPatch, Move, NewChannel};
use crate::protocol::UserView;
use crate::server::App;
use crate::store::Role;

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

/// Routes the admin endpoints; `segments` is the path split on `/`.
pub(super) async fn route(
    app: &Arc<App>,
    request: Request<Incoming>,
    method: &Method,
    segments: &[&str],
) -> Result<Response<Body>, ApiError> {
    match (method, segments) {
        (&Method::POST, ["api", "categories"]) => create_category(app, request).await,
        (&Method::PATCH, ["api", "categories", id]) => {
            let id = parse_id(id)?;
            rename_category(app, request, id).await
        }
        (&Method::DELETE, ["api", "categories", id]) => {
            let id = parse_id(id)?;
            layout_change(app, &request, |layout| layout::delete_category(layout, id)).await
        }
        (&Method::POST, ["api", "channels"]) => create_channel(app, request).await,
        (&Method::PATCH, ["api", "channels", id]) => {
            let id = parse_id(id)?;
            edit_channel(app, request, id).await
        }
        (&Method::DELETE, ["api", "channels", id]) => {
            let id = parse_id(id)?;
            layout_change(app, &request, |layout| layout::delete_channel(layout, id).map(|_| ())).await
        }
        (&Method::POST, ["api", "layout", "move"]) => move_item(app, request).await,
        (&Method::GET, ["api", "users"]) => list_users(app, &request),
        (&Method::PATCH, ["api", "users", id]) => {
            let id = parse_id(id)?;
            patch_user(app, request, id).await
        }
        (&Method::DELETE, ["api", "users", id]) => {
            let id = parse_id(id)?;
            delete_user(app, &request, id).await
        }
        (&Method::POST, ["api", "users", id, "password"]) => {
            let id = parse_id(id)?;
            reset_password(app, request, id).await
        }
        (&Method::DELETE, ["api", "users", id, "lock"]) => {
            let id = parse_id(id)?;
            unlock_user(app, &request, id)
        }
        _ => Err(ApiError::not_found(format!("no route for {method} /{}", segments.join("/")))),
    }
}

/// Applies a structure change as the requesting user and returns their new
/// view of the layout.
async fn layout_change(
    app: &App,
    request: &Request<Incoming>,
    change: impl FnOnce(&mut crate::store::Layout) -> Result<(), ApiError>,
) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, request)?;
    app.hub.change_layout(&user, change).await?;
    Ok(json_response(StatusCode::OK, &json!({"layout": app.hub.layout_for(&user)})))
}

async fn create_category(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: NameBody = read_json(app, request).await?;
    let id = app.hub.next_id();
    app.hub
        .change_layout(&user, |layout| layout::create_category(layout, id, &body.name))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": Id(id), "layout": app.hub.layout_for(&user)}),
    ))
}

async fn rename_category(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: NameBody = read_json(app, request).await?;
    app.hub
        .change_layout(&user, |layout| layout::rename_category(layout, id, &body.name))
        .await?;
    Ok(json_response(StatusCode::OK, &json!({"layout": app.hub.layout_for(&user)})))
}

async fn create_channel(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: NewChannel = read_json(app, request).await?;
    let id = app.hub.next_id();
    let config = app.config.clone();
    app.hub
        .change_layout(&user, |layout| layout::create_channel(&config, layout, id, &body))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": Id(id), "layout": app.hub.layout_for(&user)}),
    ))
}

async fn edit_channel(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: ChannelPatch = read_json(app, request).await?;
    let config = app.config.clone();
    app.hub
        .change_layout(&user, |layout| layout::edit_channel(&config, layout, id, &body))
        .await?;
    Ok(json_response(StatusCode::OK, &json!({"layout": app.hub.layout_for(&user)})))
}

async fn move_item(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: Move = read_json(app, request).await?;
    app.hub.change_layout(&user, |layout| layout::apply_move(layout, &body)).await?;
    Ok(json_response(StatusCode::OK, &json!({"layout": app.hub.layout_for(&user)})))
}

fn list_users(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, request)?;
    if user.role < Role::Moderator {
        return Err(ApiError::role_required("moderator"));
    }
    let users: Vec<UserView> = app.accounts.list().iter().map(|user| UserView::of(user)).collect();
    Ok(json_response(StatusCode::OK, &json!({"users": users})))
}

async fn patch_user(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (actor, _) = authenticate(app, &request)?;
    let patch: UserPatch = read_json(app, request).await?;
    let updated = app.accounts.patch(&actor, id, &patch).await?;
    tracing::info!(actor = actor.id, user = id, "user changed");
    app.hub.user_changed(&updated);
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&updated)})))
}

async fn delete_user(app: &App, request: &Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (actor, _) = authenticate(app, request)?;
    let deleted = app.accounts.delete(&actor, id).await?;
    tracing::info!(actor = actor.id, user = id, "user deleted");
    app.hub.user_changed(&deleted);
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&deleted)})))
}

async fn reset_password(app: &App, request: Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (actor, _) = authenticate(app, &request)?;
    if actor.role != Role::Admin {
        return Err(ApiError::role_required("admin"));
    }
    let body: PasswordBody = read_json(app, request).await?;
    crate::auth::validate_password(&body.password)?;
    let permit = app.limits.hash_permit().await?;
    let hash = crate::auth::hash_password(body.password).await?;
    drop(permit);
    let updated = app.accounts.reset_password(&actor, id, hash).await?;
    tracing::info!(actor = actor.id, user = id, "password reset");
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&updated)})))
}

/// Ends the failed-login lock of a user's name. Only admins may.
fn unlock_user(app: &App, request: &Request<Incoming>, id: u64) -> Result<Response<Body>, ApiError> {
    let (actor, _) = authenticate(app, request)?;
    if actor.role != Role::Admin {
        return Err(ApiError::role_required("admin"));
    }
    let user = app.accounts.get(id).ok_or_else(|| ApiError::not_found("user not found"))?;
    let unlocked = app.throttle.unlock(&user.name);
    tracing::info!(actor = actor.id, user = id, unlocked, "login lock cleared");
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&user), "unlocked": unlocked})))
}
