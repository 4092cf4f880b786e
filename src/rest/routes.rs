//! The REST route table, read from the `google.api.http` annotations in the descriptor set at
//! start-up. Reading the descriptors (rather than generating code at build time) keeps REST a
//! pure function of `proto/`: a new annotated RPC gets its route with no Rust written for it.

use std::sync::Arc;

use http::{Method, StatusCode};
use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, MessageDescriptor, MethodDescriptor, Value,
};

use super::template::{Bindings, Parts, PathTemplate, normalise};
use crate::proto::google::api::{HttpRule, http_rule::Pattern};

mod location;

pub use location::Created;

/// Where a request's JSON body goes in the gRPC request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field comes from the path or the query string.
    None,
    /// `body: "*"`: the body is the whole request message (path variables still apply).
    All,
    /// `body: "field"`: the body is that field; the rest comes from the path and query.
    Field(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    /// `response_body`: answer with this field of the response instead of the whole message.
    pub response_body: Option<String>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC path the call is forwarded to.
    pub grpc_path: String,
    /// Status of a successful answer (`iggy.gateway.v1.http_success_status`, default 200).
    pub success: StatusCode,
    /// For a create (201): how to write the created resource's URL (`Location`), when a GET
    /// route names it.
    pub created: Option<Created>,
    /// `GET /v1/streams/{stream}`: the route's metrics label, written once.
    pub label: Arc<str>,
    /// The method is marked `idempotency_level = NO_SIDE_EFFECTS`: a `GET` of it also answers
    /// `HEAD`. A poll may commit and a subscription may join a group and commit, so theirs do
    /// not: a `HEAD` would do that with the answer never read.
    pub side_effect_free: bool,
}

/// `google.protobuf.MethodOptions.IdempotencyLevel.NO_SIDE_EFFECTS`.
const NO_SIDE_EFFECTS: i32 = 1;

/// Whether `method` is marked `idempotency_level = NO_SIDE_EFFECTS`: the methods a `HEAD`, or
/// a Connect `GET`, may call.
pub fn side_effect_free(method: &MethodDescriptor) -> bool {
    method
        .options()
        .get_field_by_name("idempotency_level")
        .is_some_and(|level| matches!(*level, Value::EnumNumber(NO_SIDE_EFFECTS)))
}

/// What [`RouteTable::find`] found for a method and path.
pub enum Lookup<'a> {
    /// The route, with the path variables' text.
    Found(&'a Route, Bindings),
    /// The path exists, but not for this method; the methods it has.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// By a path's segment count, the routes whose template can match it, in table order (the
    /// first match wins): those of that many segments, and those ending in `**` with fewer.
    /// The last list is for every longer path.
    by_length: Vec<Vec<usize>>,
}

impl RouteTable {
    /// Every annotated method of every service in `package`, with its additional bindings.
    pub fn from_descriptors(pool: &DescriptorPool, package: &str) -> Result<Self, String> {
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptor set lacks google.api.http")?;
        let success = pool.get_extension_by_name("iggy.gateway.v1.http_success_status");
        let mut routes = Vec::new();
        for service in pool.services().filter(|s| s.package_name() == package) {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule: HttpRule = options
                    .get_extension(&http)
                    .as_message()
                    .ok_or_else(|| {
                        format!("{}: google.api.http is not a message", method.full_name())
                    })?
                    .transcode_to()
                    .map_err(|err| format!("{}: bad google.api.http: {err}", method.full_name()))?;
                let status = success_status(&method, success.as_ref())?;
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                routes.push(route(&method, &rule, &grpc_path, status)?);
                for binding in &rule.additional_bindings {
                    if !binding.additional_bindings.is_empty() {
                        return Err(format!(
                            "{}: additional bindings may not nest",
                            method.full_name()
                        ));
                    }
                    routes.push(route(&method, binding, &grpc_path, status)?);
                }
            }
        }
        location::link(&mut routes);
        Ok(Self::indexed(routes))
    }

    fn indexed(routes: Vec<Route>) -> Self {
        let by_length = by_length(routes.iter().map(|route| route.template.length()));
        Self { routes, by_length }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn find(&self, method: &Method, path: &str) -> Lookup<'_> {
        // HEAD is the same call as GET with its body left unsent (RFC 9110), so only a GET
        // without side effects takes it.
        let head = *method == Method::HEAD;
        let wanted = if head { &Method::GET } else { method };
        let path = normalise(path);
        let Some(parts) = Parts::of(&path) else {
            return Lookup::NotFound;
        };
        let mut allowed = Vec::new();
        let mut takes_head = false;
        let candidates = self
            .by_length
            .get(parts.count().min(self.by_length.len().saturating_sub(1)))
            .map_or(&[][..], Vec::as_slice);
        for route in candidates
            .iter()
            .filter_map(|&index| self.routes.get(index))
        {
            if let Some(bindings) = route.template.matches_parts(&parts) {
                let headless = route.http_method == Method::GET && route.side_effect_free;
                if route.http_method == *wanted && (!head || headless) {
                    return Lookup::Found(route, bindings);
                }
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
                takes_head |= headless;
            }
        }
        if takes_head {
            allowed.push(Method::HEAD);
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

/// [`RouteTable::by_length`] for templates of these lengths (segments needed, `**` last).
fn by_length(lengths: impl Iterator<Item = (usize, bool)> + Clone) -> Vec<Vec<usize>> {
    let longest = lengths.clone().map(|(fixed, _)| fixed).max().unwrap_or(0);
    let mut by_length = vec![Vec::new(); longest + 2];
    for (index, (fixed, more)) in lengths.enumerate() {
        let counts = if more {
            fixed..longest + 2
        } else {
            fixed..fixed + 1
        };
        for count in counts {
            by_length[count].push(index);
        }
    }
    by_length
}

fn success_status(
    method: &MethodDescriptor,
    extension: Option<&ExtensionDescriptor>,
) -> Result<StatusCode, String> {
    let Some(extension) = extension else {
        return Ok(StatusCode::OK);
    };
    let options = method.options();
    if !options.has_extension(extension) {
        return Ok(StatusCode::OK);
    }
    let code = options
        .get_extension(extension)
        .as_u32()
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(StatusCode::is_success)
        .ok_or_else(|| {
            format!(
                "{}: http_success_status must be a 2xx code",
                method.full_name()
            )
        })?;
    Ok(code)
}

fn route(
    method: &MethodDescriptor,
    rule: &HttpRule,
    grpc_path: &str,
    success: StatusCode,
) -> Result<Route, String> {
    let name = method.full_name();
    let (http_method, path) = match &rule.pattern {
        Some(Pattern::Get(path)) => (Method::GET, path),
        Some(Pattern::Put(path)) => (Method::PUT, path),
        Some(Pattern::Post(path)) => (Method::POST, path),
        Some(Pattern::Delete(path)) => (Method::DELETE, path),
        Some(Pattern::Patch(path)) => (Method::PATCH, path),
        Some(Pattern::Custom(custom)) => (
            Method::from_bytes(custom.kind.as_bytes())
                .map_err(|err| format!("{name}: bad custom method {:?}: {err}", custom.kind))?,
            &custom.path,
        ),
        None => return Err(format!("{name}: google.api.http has no pattern")),
    };
    let template = PathTemplate::parse(path).map_err(|err| format!("{name}: {err}"))?;
    let input = method.input();
    for field in template.fields() {
        field_kind_at(&input, field).map_err(|err| format!("{name}: path variable {err}"))?;
    }
    let body = match rule.body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::All,
        field => {
            input.get_field_by_name(field).ok_or_else(|| {
                format!("{name}: body field {field:?} is not in {}", input.name())
            })?;
            BodyRule::Field(field.to_owned())
        }
    };
    let response_body = match rule.response_body.as_str() {
        "" => None,
        field => {
            let output = method.output();
            output.get_field_by_name(field).ok_or_else(|| {
                format!(
                    "{name}: response_body field {field:?} is not in {}",
                    output.name()
                )
            })?;
            Some(field.to_owned())
        }
    };
    let label = Arc::from(format!("{http_method} {template}"));
    Ok(Route {
        label,
        side_effect_free: side_effect_free(method),
        http_method,
        template,
        body,
        response_body,
        method: method.clone(),
        grpc_path: grpc_path.to_owned(),
        success,
        created: None,
    })
}

/// Resolves a dotted field path (`a.b.c`) against a message, accepting proto names and
/// lowerCamelCase JSON names for each step.
pub fn field_kind_at(
    message: &MessageDescriptor,
    path: &str,
) -> Result<prost_reflect::FieldDescriptor, String> {
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current
            .get_field_by_name(step)
            .or_else(|| current.get_field_by_json_name(step))
            .ok_or_else(|| format!("{path:?}: no field {step:?} in {}", current.name()))?;
        if steps.peek().is_none() {
            return Ok(field);
        }
        current = match field.kind() {
            prost_reflect::Kind::Message(next) if !field.is_list() && !field.is_map() => next,
            _ => return Err(format!("{path:?}: {step:?} is not a message field")),
        };
    }
    Err(format!("{path:?} is empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_matched_only_against_templates_of_its_length_in_table_order() {
        // `/a/b`, `/a/**`, `/a/b/c`, `/**`, `/x`.
        let index =
            by_length([(2, false), (1, true), (3, false), (0, true), (1, false)].into_iter());
        assert_eq!(
            index,
            [
                vec![3],
                vec![1, 3, 4],
                vec![0, 1, 3],
                vec![1, 2, 3],
                vec![1, 3],
            ]
        );
    }

    /// What a lookup answered, comparable: the route found and its bindings, or the methods
    /// allowed, or nothing.
    type Answer = (Option<(String, Bindings)>, Vec<Method>);

    fn answer(lookup: Lookup<'_>) -> Answer {
        match lookup {
            Lookup::Found(route, bindings) => (Some((route.grpc_path.clone(), bindings)), vec![]),
            Lookup::MethodNotAllowed(allowed) => (None, allowed),
            Lookup::NotFound => (None, vec![]),
        }
    }

    /// The lookup as it was before the index: every route tried in table order.
    fn scan(table: &RouteTable, method: &Method, path: &str) -> Answer {
        let head = *method == Method::HEAD;
        let wanted = if head { &Method::GET } else { method };
        let mut allowed = Vec::new();
        let mut takes_head = false;
        for route in table.routes() {
            if let Some(bindings) = route.template.matches(path) {
                let headless = route.http_method == Method::GET && route.side_effect_free;
                if route.http_method == *wanted && (!head || headless) {
                    return (Some((route.grpc_path.clone(), bindings)), vec![]);
                }
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
                takes_head |= headless;
            }
        }
        if takes_head {
            allowed.push(Method::HEAD);
        }
        (None, allowed)
    }

    /// The index answers as trying every route in turn does (the route and its bindings, or
    /// the methods allowed in their order), for every route's own path, one segment shorter
    /// and longer, with a trailing or doubled slash, and past every template's length, under
    /// every method.
    #[test]
    fn the_index_finds_what_a_scan_of_every_route_finds() {
        let table = crate::rest::route_table().expect("route table builds");
        let mut found = 0;
        let mut refused = 0;
        for route in table.routes() {
            let path = route
                .template
                .openapi_path()
                .split('/')
                .map(|segment| match segment.split_once('}') {
                    // A variable, keeping a verb after it (`{topic}:purge`).
                    Some((_, verb)) => format!("v{verb}"),
                    None => segment.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let shorter = path
                .rsplit_once('/')
                .map_or(String::new(), |(head, _)| head.to_owned());
            for path in [
                path.clone(),
                format!("{path}/more"),
                format!("{path}/"),
                path.replacen('/', "//", 2),
                format!("{path}{}", "/x".repeat(12)),
                shorter,
            ] {
                for method in [
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ] {
                    let indexed = answer(table.find(&method, &path));
                    assert_eq!(indexed, scan(&table, &method, &path), "{method} {path}");
                    found += usize::from(indexed.0.is_some());
                    refused += usize::from(!indexed.1.is_empty());
                }
            }
        }
        assert!(found >= table.routes().len(), "{found} found");
        assert!(refused > 0, "no path answered with its methods");
    }
}
