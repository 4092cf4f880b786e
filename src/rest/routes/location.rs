//! Where a create's answer says the new resource lives (`Location` on a 201), read from the
//! route table rather than written per RPC. The resource is the message the create answers
//! with; its URL is the GET binding, in the same service, of the RPC that answers that message
//! type, whose path is the create's path plus one variable. The variables they share take the
//! create request's values; the new one takes the created resource's `id` (its `name` when it
//! has none), which, unlike a name, a rename does not change.

use http::{Method, StatusCode};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::Route;
use crate::rest::fields::{self, Fields};

/// How to write the URL of what a create made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The GET route's path in OpenAPI's form, e.g. `/v1/streams/{stream}/topics/{topic}`.
    template: String,
    /// Variables filled from the create request's fields of the same name: the create's own
    /// path variables (its GET route is its path and one more segment), so a request's path
    /// fields always hold them.
    shared: Vec<String>,
    /// The variable that names the new resource.
    own: String,
    /// The create answer's field that holds the resource (`stream` of `CreateStreamResponse`).
    resource: String,
    /// The resource's field that fills `own`.
    key: String,
}

impl Created {
    /// The created resource's URL (a path: it stays right behind any proxy that keeps the
    /// path); `None` when a value it needs is missing or empty. From the descriptors' messages:
    /// the tests' reference for the URL REST writes from the typed codec's answer.
    #[cfg(test)]
    pub fn url(&self, request: &DynamicMessage, reply: &DynamicMessage) -> Option<String> {
        // An answer without the resource names none (its defaults would name id 0).
        if !reply.has_field_by_name(&self.resource) {
            return None;
        }
        let resource = reply.get_field_by_name(&self.resource)?;
        let own = scalar_text(&*resource.as_message()?.get_field_by_name(&self.key)?)?;
        self.filled(request, own)
    }

    /// [`Created::url`] with the answer as the typed codec wrote it (`reply`), read from its
    /// text. The resource's key is a string or an integer in the API (`created_by` takes
    /// `id` or `name`), which JSON writes as text [`fields::scalar_text`] reads back.
    pub fn url_from_json(&self, request: &DynamicMessage, reply: &[u8]) -> Option<String> {
        let resource = Fields::of(reply).ok()?.get(&self.resource)?;
        let own = Fields::of(resource.get().as_bytes())
            .ok()?
            .get(&self.key)
            .and_then(fields::scalar_text)
            .filter(|own| !own.is_empty())?;
        self.filled(request, own)
    }

    /// The template filled with the request's shared variables and the resource's key, `own`.
    fn filled(&self, request: &DynamicMessage, own: String) -> Option<String> {
        let mut url = self.template.clone();
        for variable in &self.shared {
            let value = scalar_text(&*request.get_field_by_name(variable)?)?;
            url = url.replace(&format!("{{{variable}}}"), &encode_segment(&value));
        }
        Some(url.replace(&format!("{{{}}}", self.own), &encode_segment(&own)))
    }

    /// The GET route the URL is an instance of, in OpenAPI's form.
    pub fn template(&self) -> &str {
        &self.template
    }
}

/// Gives every create route (201) the way to write its resource's URL, where the table holds
/// a GET route for it.
pub(super) fn link(routes: &mut [Route]) {
    let found: Vec<Option<Created>> = routes
        .iter()
        .map(|route| {
            (route.success == StatusCode::CREATED)
                .then(|| created_by(route, routes))
                .flatten()
        })
        .collect();
    for (route, created) in routes.iter_mut().zip(found) {
        route.created = created;
    }
}

fn created_by(create: &Route, routes: &[Route]) -> Option<Created> {
    let output = create.method.output();
    let resource = resource_field(&output, create.response_body.as_deref())?;
    let Kind::Message(kind) = resource.kind() else {
        return None;
    };
    let key = ["id", "name"]
        .into_iter()
        .find(|name| kind.get_field_by_name(name).is_some())?;
    let collection = create.template.openapi_path();
    let service = create.method.parent_service();
    let input = create.method.input();
    routes.iter().find_map(|get| {
        if get.http_method != Method::GET
            || get.method.is_server_streaming()
            || get.method.parent_service().full_name() != service.full_name()
            || resource_field(&get.method.output(), get.response_body.as_deref())
                .is_none_or(|field| field.kind() != Kind::Message(kind.clone()))
        {
            return None;
        }
        let mut variables: Vec<String> = get.template.fields().map(str::to_owned).collect();
        let own = variables.pop()?;
        let template = get.template.openapi_path();
        if template != format!("{collection}/{{{own}}}")
            || !variables
                .iter()
                .all(|variable| input.get_field_by_name(variable).is_some())
        {
            return None;
        }
        Some(Created {
            template,
            shared: variables,
            own,
            resource: resource.name().to_owned(),
            key: key.to_owned(),
        })
    })
}

/// The answer field that holds the resource: `response_body`'s, or the answer's one singular
/// message field.
fn resource_field(
    output: &MessageDescriptor,
    response_body: Option<&str>,
) -> Option<FieldDescriptor> {
    let singular_message = |field: &FieldDescriptor| {
        matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map()
    };
    if let Some(name) = response_body {
        return output.get_field_by_name(name).filter(singular_message);
    }
    let mut fields = output.fields().filter(singular_message);
    let field = fields.next()?;
    fields.next().is_none().then_some(field)
}

/// A string or integer field's value as text; `None` for anything else, or an empty string.
fn scalar_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a name holding `/`,
/// `?` or a space stays one path segment.
fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
