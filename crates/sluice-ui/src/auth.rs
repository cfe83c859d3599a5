//! The cluster token on every UI request: `Authorization: Bearer <token>` (scripts, the API)
//! or the `sluice_token` cookie the login form sets (a browser). The cookie holds the token
//! hex-encoded, so any printable token is a valid cookie value; it is HttpOnly and
//! SameSite=Strict, so neither a page's script nor another site's form can use it.

use crate::pages::Page;
use crate::{ClusterView, Ui};
use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::sync::Arc;

const COOKIE: &str = "sluice_token";

/// Lets a request through when the cluster has no token or the request carries it; answers
/// an API request 401 with JSON, a page request 401 with the login form.
pub async fn require_token<V: ClusterView>(
    State(ui): State<Arc<Ui<V>>>,
    request: Request,
    next: Next,
) -> Response {
    if !ui.security.has_token() || carries_token(&ui, request.headers()) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    if path.starts_with("/api/") {
        let body = serde_json::json!({"error": "missing or wrong cluster token"});
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response();
    }
    let page = LoginPage {
        next: path,
        wrong: false,
    };
    (StatusCode::UNAUTHORIZED, Page(page)).into_response()
}

fn carries_token<V>(ui: &Ui<V>, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| ui.security.token_is(t.as_bytes())) {
        return true;
    }
    cookie(headers)
        .and_then(|v| hex::decode(v).ok())
        .is_some_and(|t| ui.security.token_is(&t))
}

/// The value of the `sluice_token` cookie, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A POST from a page of this UI: a browser names where a form came from in `Origin` (or
/// `Sec-Fetch-Site`), and another site's page must not stop a job on a loopback driver.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    host.is_some() && origin_host == host
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub next: String,
    pub wrong: bool,
}

pub async fn login_form() -> impl IntoResponse {
    Page(LoginPage {
        next: "/".into(),
        wrong: false,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// Checks the token typed into the form and sets the cookie; back to the form when wrong.
pub async fn login<V: ClusterView>(
    State(ui): State<Arc<Ui<V>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(&form.next);
    if !same_origin(&headers) || !ui.security.token_is(form.token.trim().as_bytes()) {
        let page = LoginPage { next, wrong: true };
        return (StatusCode::UNAUTHORIZED, Page(page)).into_response();
    }
    let secure = if ui.security.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
        hex::encode(form.token.trim())
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

/// Where to go after logging in: a path of this UI, never another site (`//host`).
fn local_path(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sluice_token=6162; b=2"),
        );
        assert_eq!(cookie(&h), Some("6162"));
        h.insert(header::COOKIE, HeaderValue::from_static("sluice_tokenx=1"));
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn only_a_same_origin_post_stops_a_job() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "a client that names no origin");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn login_goes_back_only_to_a_page_of_this_ui() {
        assert_eq!(local_path("/jobs/a"), "/jobs/a");
        assert_eq!(local_path("//evil.example/x"), "/");
        assert_eq!(local_path("https://evil.example"), "/");
        assert_eq!(local_path(""), "/");
    }
}
