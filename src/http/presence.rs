//! The presence endpoints: who is online, and the user's own "appear
//! offline" choice.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{authenticate, json_response, read_json, Body};
use crate::error::ApiError;
use crate::presence::Ids;
use crate::protocol::UserView;
use crate::server::App;

#[derive(Deserialize)]
struct PresenceBody {
    invisible: bool,
}

/// GET /api/presence: `{"online": [user ids]}`, as of the last presence push.
pub(super) fn online(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authenticate(app, request)?;
    let online = app.presence.online();
    Ok(json_response(StatusCode::OK, &json!({"online": Ids(&online)})))
}

/// PUT /api/presence `{"invisible": bool}`: sets "appear offline" and
/// returns the updated user.
pub(super) async fn set(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (user, _) = authenticate(app, &request)?;
    let body: PresenceBody = read_json(app, request).await?;
    let updated = crate::presence::set_invisible(app, user.id, body.invisible).await?;
    Ok(json_response(StatusCode::OK, &json!({"user": UserView::of(&updated)})))
}
