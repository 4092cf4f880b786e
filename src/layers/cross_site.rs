//! Cross-site request forgery: a web page may make its visitor's browser send a "simple"
//! request (a `POST` with no body, a form's or `text/plain`) to any address, the gateway on
//! localhost included, without a CORS preflight; CORS only hides the answer from the page.
//! Such a request that names another origin than the ones `CORS_ALLOWED_ORIGINS` lists (or the
//! gateway's own) is refused with 403 / PERMISSION_DENIED, reason `ORIGIN_NOT_ALLOWED`, before
//! anything runs: without it a page could purge a stream with an empty `POST …:purge`. Every
//! other request a browser sends cross-site (JSON, gRPC-Web, Connect) is preflighted, and so
//! already held to the same list; clients other than browsers send no `Origin`.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Method, Request, header},
};
use tonic::Code;

use super::guard::{Exempt, Policy};
use crate::answer::Rejection;

#[derive(Debug, Clone)]
pub struct CrossSite {
    /// `CORS_ALLOWED_ORIGINS`, lower case; `None` when it allows any origin.
    allowed: Option<Arc<Vec<String>>>,
}

impl CrossSite {
    pub fn new(cors_origins: &[String]) -> Self {
        let any = cors_origins.iter().any(|origin| origin.trim() == "*");
        Self {
            allowed: (!any).then(|| {
                Arc::new(
                    cors_origins
                        .iter()
                        .map(|origin| origin.trim().trim_end_matches('/').to_ascii_lowercase())
                        .collect(),
                )
            }),
        }
    }

    fn allows<B>(&self, origin: &str, request: &Request<B>) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let origin = origin.trim().to_ascii_lowercase();
        allowed.contains(&origin) || is_own(&origin, request)
    }
}

/// Whether a request may be sent by a browser without a preflight: only `POST` changes
/// anything among the methods that may (`GET` and `HEAD` are safe), and only with no content
/// type or one a form can send.
fn is_simple<B>(request: &Request<B>) -> bool {
    if request.method() != Method::POST {
        return false;
    }
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = content_type
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
    )
}

/// Whether `origin` (`scheme://host[:port]`, lower case) is the one the request was sent to, as
/// a page the gateway serves itself (`/docs`) would send.
fn is_own<B>(origin: &str, request: &Request<B>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let requested = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_ascii_lowercase())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
        });
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let with_port = |authority: &str| {
        // A port follows the last colon, after an IPv6 literal's closing bracket.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !port.contains(']') && !host.is_empty());
        if has_port {
            authority.to_owned()
        } else {
            format!("{authority}{default_port}")
        }
    };
    requested.is_some_and(|requested| with_port(&requested) == with_port(authority))
}

impl Policy for CrossSite {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        if !is_simple(request) {
            return Ok(());
        }
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        // Not text: no browser sent it, and no origin it could be allowed as.
        let origin = origin.to_str().unwrap_or("null");
        if self.allows(origin, request) {
            return Ok(());
        }
        Err(Rejection::new(
            Code::PermissionDenied,
            "ORIGIN_NOT_ALLOWED",
            format!(
                "a request from the web origin {origin} may not change anything: send it as \
                 JSON (which asks the browser for a preflight) from an origin listed in \
                 CORS_ALLOWED_ORIGINS"
            ),
        )
        .metadata("origin", origin))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::CrossSite;

    fn post(origin: &str, host: &str, content_type: Option<&str>) -> Request<()> {
        let mut request = Request::post("/v1/streams/orders:purge")
            .header("origin", origin)
            .header("host", host);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(()).expect("request")
    }

    #[test]
    fn only_a_listed_origin_or_the_gateways_own_may_send_what_a_browser_sends_unasked() {
        let listed = CrossSite::new(&["https://app.example".to_owned()]);
        let allowed = |request: &Request<()>| {
            let origin = request.headers()["origin"].to_str().expect("text");
            !super::is_simple(request) || listed.allows(origin, request)
        };
        assert!(!allowed(&post(
            "https://evil.example",
            "localhost:8080",
            None
        )));
        assert!(!allowed(&post(
            "https://evil.example",
            "localhost:8080",
            Some("text/plain;charset=UTF-8")
        )));
        assert!(!allowed(&post("null", "localhost:8080", None)));
        assert!(allowed(&post(
            "https://APP.example",
            "localhost:8080",
            None
        )));
        assert!(allowed(&post(
            "http://localhost:8080",
            "localhost:8080",
            None
        )));
        assert!(allowed(&post("http://localhost", "localhost:80", None)));
        assert!(allowed(&post("https://[::1]", "[::1]:443", None)));
        assert!(!allowed(&post(
            "http://localhost:8081",
            "localhost:8080",
            None
        )));
        assert!(!allowed(&post("https://localhost:8080", "localhost", None)));
        // JSON is preflighted: CORS decides.
        assert!(allowed(&post(
            "https://evil.example",
            "localhost:8080",
            Some("application/json")
        )));
        let any = CrossSite::new(&["*".to_owned()]);
        assert!(any.allows("https://evil.example", &post("x", "y", None)));
    }
}
