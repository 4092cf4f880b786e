//! Cross-site request forgery: a web page may make its visitor's browser send a request the
//! browser does not preflight (a `POST` with no body, a form's or `text/plain`; a `GET` from an
//! `<img>` or an `EventSource`) to any address, the gateway on localhost included; CORS only
//! hides the answer from the page. Such a request from another origin than the ones
//! `CORS_ALLOWED_ORIGINS` lists (or the gateway's own) is refused with 403 / PERMISSION_DENIED,
//! reason `ORIGIN_NOT_ALLOWED`, before anything runs, when it could change something: a `POST`
//! in any content type a browser may send unasked (anything but the API's own, which a browser
//! always preflights, so CORS already holds them to the same list), and a `GET` that commits a
//! consumer's offset (a `HEAD`, sent as freely, is refused on those routes by the route table).
//! Without it a page could purge a stream with an empty `POST …:purge`, or move a consumer past
//! unread messages with an `<img>` of a poll. A cross-site request is known by its `Origin`, or,
//! for a `GET` that sends none, by `Sec-Fetch-Site`; clients other than browsers send neither.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Method, Request, header},
};
use tonic::Code;

use super::{
    allowed_hosts::{requested_host, split_authority},
    guard::{Exempt, Policy},
};
use crate::{answer::Rejection, extensions::names};

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

/// Content types a browser never sends cross-origin without a preflight (they are not
/// CORS-safelisted): the API's own. Any other, or none, or one that is not even text, may come
/// from a page unasked.
const PREFLIGHTED: [&str; 5] = [
    "application/json",
    "application/proto",
    "application/grpc",
    "application/connect+",
    "application/x-protobuf",
];

/// Whether a `POST` may have been sent by a browser without a preflight.
fn is_unasked_post<B>(request: &Request<B>) -> bool {
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else {
        return true;
    };
    // Bytes a header may hold but text may not still make a type a browser sends unasked
    // (`text/plain;x=\u{e9}`): read what is there, never nothing.
    let text = String::from_utf8_lossy(content_type.as_bytes());
    let essence = text.split(';').next().unwrap_or("").trim();
    !PREFLIGHTED.iter().any(|preflighted| {
        essence
            .get(..preflighted.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(preflighted))
            && (preflighted.ends_with('+')
                || essence.len() == preflighted.len()
                || essence[preflighted.len()..].starts_with('+')
                || essence[preflighted.len()..].starts_with("-web"))
    })
}

/// Query parameters with which a `GET` stores something: a poll's or a subscription's commit of
/// its consumer's offset (snake_case and lowerCamelCase, as REST reads them).
const COMMITTING: [&str; 6] = [
    "auto_commit",
    "autoCommit",
    "commit_every",
    "commitEvery",
    "commit_interval_ms",
    "commitIntervalMs",
];

/// Whether a `GET` asks to commit anything (a parameter above, set to anything but off).
fn commits<B>(request: &Request<B>) -> bool {
    let Some(query) = request.uri().query() else {
        return false;
    };
    form_urlencoded::parse(query.as_bytes()).any(|(key, value)| {
        COMMITTING.contains(&key.as_ref()) && !matches!(value.as_ref(), "" | "0" | "false")
    })
}

/// Whether `origin` (`scheme://host[:port]`, lower case) is the one the request was sent to, as
/// a page the gateway serves itself (`/docs`) would send. Both sides are read as
/// `ALLOWED_HOSTS` reads a request's host; a missing port is the scheme's.
fn is_own<B>(origin: &str, request: &Request<B>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_authority(authority), requested_host(request)) {
        (Some((origin_host, origin_port)), Some((host, port))) => {
            origin_host == host
                && origin_port.unwrap_or(default_port) == port.unwrap_or(default_port)
        }
        _ => false,
    }
}

impl Policy for CrossSite {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        let headers = request.headers();
        let origin = headers.get(header::ORIGIN);
        let method = request.method();
        let foreign = match origin {
            // Not text: no origin it could be allowed as.
            Some(origin) => !self.allows(origin.to_str().unwrap_or("null"), request),
            // A `GET` from an `<img>` carries no `Origin`; a browser still says where it came
            // from.
            None => {
                *method == Method::GET
                    && headers
                        .get(&names::SEC_FETCH_SITE)
                        .is_some_and(|site| site != "same-origin" && site != "none")
            }
        };
        if !foreign {
            return Ok(());
        }
        let unasked = if *method == Method::POST {
            is_unasked_post(request)
        } else {
            *method == Method::GET && commits(request)
        };
        if !unasked {
            return Ok(());
        }
        let origin = origin
            .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned())
            .unwrap_or_else(|| "of another site".to_owned());
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
            !super::is_unasked_post(request) || listed.allows(origin, request)
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
        // The API's own types are preflighted: CORS decides.
        for preflighted in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/grpc-web+proto",
            "application/grpc",
            "application/connect+json",
            "application/proto",
        ] {
            assert!(
                allowed(&post(
                    "https://evil.example",
                    "localhost:8080",
                    Some(preflighted)
                )),
                "{preflighted}"
            );
        }
        // Anything else may come unasked, whatever it is.
        for unasked in [
            "application/jsonx",
            "text/plain;x=\u{e9}",
            "multipart/form-data",
        ] {
            assert!(
                !allowed(&post(
                    "https://evil.example",
                    "localhost:8080",
                    Some(unasked)
                )),
                "{unasked}"
            );
        }
        let any = CrossSite::new(&["*".to_owned()]);
        assert!(any.allows("https://evil.example", &post("x", "y", None)));
    }

    #[test]
    fn a_get_commits_when_it_asks_to() {
        let get = |query: &str| {
            Request::get(format!("/v1/streams/s/topics/t/messages?{query}"))
                .body(())
                .expect("request")
        };
        assert!(super::commits(&get("consumer=c&auto_commit=true")));
        assert!(super::commits(&get("autoCommit=1")));
        assert!(super::commits(&get("commit_every=10")));
        assert!(!super::commits(&get("auto_commit=false&consumer=c")));
        assert!(!super::commits(&get("count=10")));
    }
}
