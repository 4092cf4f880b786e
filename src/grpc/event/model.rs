//! The domain events the original service modelled (User, Order, Generic) and their rules,
//! checked here once for every protocol. An event arrives in the original JSON form (`type` +
//! `data`) or as a typed member; both are read into the typed messages, checked, and stored as
//! the envelope the original service wrote, so other Iggy clients keep reading the same JSON.

use serde_json::{Map, Value};
use tonic::Status;

use super::currency::is_iso_4217;
use crate::{
    answer::invalid_field,
    grpc::convert::{
        Ids, MAX_JSON_DEPTH, MAX_STORED_JSON_DEPTH, json_depth, json_to_value, message_id,
        message_id_text, value_to_json,
    },
    proto::{self, event_payload},
};

/// An action of a typed event: its name, the fields it requires, the fields it may carry.
type Action = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// Payload types the original service knew.
const PAYLOAD_TYPES: [&str; 3] = ["User", "Order", "Generic"];
/// What each action of a User event takes: (action, required fields, optional fields), as
/// the original service's variants did.
const USER_ACTIONS: [Action; 4] = [
    ("Created", &["user_id", "email", "name"], &[]),
    ("Updated", &["user_id"], &["email", "name"]),
    ("Deleted", &["user_id"], &[]),
    ("LoggedIn", &["user_id", "ip_address"], &[]),
];
/// What each action of an Order event takes; `currency` is new, so optional.
const ORDER_ACTIONS: [Action; 4] = [
    (
        "Created",
        &["order_id", "user_id", "items", "total_amount"],
        &["currency"],
    ),
    ("Updated", &["order_id", "status"], &[]),
    ("Cancelled", &["order_id", "reason"], &[]),
    ("Shipped", &["order_id", "tracking_number", "carrier"], &[]),
];
/// The original service's order statuses, spelled as it wrote them.
const ORDER_STATUSES: [&str; 6] = [
    "pending",
    "confirmed",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
];
const MAX_EVENT_TYPE_LEN: usize = 256;
/// Names, reasons, carriers, tracking numbers: long enough for any real one, short enough to
/// keep an event small.
const MAX_TEXT_LEN: usize = 256;
/// RFC 5321's limits on a path (254) and a local part (64).
const MAX_EMAIL_LEN: usize = 254;
const MAX_EMAIL_LOCAL_LEN: usize = 64;
/// An amount's digits: 18 before the point hold any real amount, 9 after match
/// `google.type.Money`'s nanos; together they stay exact in a reader's 128-bit integer.
const MAX_AMOUNT_INTEGER_DIGITS: usize = 18;
const MAX_AMOUNT_FRACTION_DIGITS: usize = 9;

/// An event that passed every rule, in the form it is stored in.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvent {
    /// The event's id, which becomes the stored message's id.
    pub id: u128,
    /// The original service's envelope, `{"id","event_type","timestamp","payload":{"type",
    /// "data"},...}`, with a User or Order event's data in its canonical form (snake_case keys,
    /// empty fields left out).
    pub envelope: Value,
}

/// A payload read into its typed form.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedPayload {
    User(proto::UserEvent),
    Order(proto::OrderEvent),
    Generic(Value),
}

impl TypedPayload {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::User(_) => "User",
            Self::Order(_) => "Order",
            Self::Generic(_) => "Generic",
        }
    }

    /// The `data` the envelope stores: the typed message as proto3 JSON with its proto field
    /// names and without empty fields, or a Generic event's JSON as given.
    pub fn data(&self) -> Value {
        fn put(object: &mut Map<String, Value>, key: &str, value: &str) {
            if !value.is_empty() {
                object.insert(key.into(), Value::String(value.to_owned()));
            }
        }
        let mut object = Map::new();
        let o = &mut object;
        match self {
            Self::User(user) => {
                put(o, "action", &user.action);
                put(o, "user_id", &user.user_id);
                put(o, "email", &user.email);
                put(o, "name", &user.name);
                put(o, "ip_address", &user.ip_address);
            }
            Self::Order(order) => {
                put(o, "action", &order.action);
                put(o, "order_id", &order.order_id);
                put(o, "user_id", &order.user_id);
                if !order.items.is_empty() {
                    let items = order.items.iter().map(|item| {
                        let mut line = Map::new();
                        if !item.product_id.is_empty() {
                            line.insert(
                                "product_id".into(),
                                Value::String(item.product_id.clone()),
                            );
                        }
                        line.insert("quantity".into(), Value::from(item.quantity));
                        if !item.unit_price.is_empty() {
                            line.insert(
                                "unit_price".into(),
                                Value::String(item.unit_price.clone()),
                            );
                        }
                        Value::Object(line)
                    });
                    o.insert("items".into(), Value::Array(items.collect()));
                }
                put(o, "total_amount", &order.total_amount);
                put(o, "currency", &order.currency);
                put(o, "status", &order.status);
                put(o, "reason", &order.reason);
                put(o, "tracking_number", &order.tracking_number);
                put(o, "carrier", &order.carrier);
            }
            Self::Generic(json) => return json.clone(),
        }
        Value::Object(object)
    }
}

/// Checks an event (`field` is where the request holds it, e.g. `event` or `events[2]`) and
/// builds the envelope that stores it. Every refusal names the field at fault.
pub fn check_event(field: &str, event: proto::Event) -> Result<CheckedEvent, Status> {
    if event.id.is_empty() {
        return Err(invalid_field(format!("{field}.id"), "is required (a UUID)"));
    }
    // Never empty here: an event names its own id.
    let id = message_id(format_args!("{field}.id"), &event.id, &mut Ids::default())?;
    if event.event_type.is_empty()
        || event.event_type.len() > MAX_EVENT_TYPE_LEN
        || event.event_type.chars().any(char::is_control)
    {
        return Err(invalid_field(
            format!("{field}.event_type"),
            format!("must be 1 to {MAX_EVENT_TYPE_LEN} bytes without control characters"),
        ));
    }
    let at = event
        .timestamp
        .ok_or_else(|| invalid_field(format!("{field}.timestamp"), "is required (RFC 3339)"))?;
    // Stored as text no JSON answer could write back: every REST poll of it would fail.
    if !crate::proto::wkt::Timestamp(&at).is_writable() {
        return Err(invalid_field(
            format!("{field}.timestamp"),
            "must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        ));
    }
    let payload = event
        .payload
        .ok_or_else(|| invalid_field(format!("{field}.payload"), "is required"))?;
    let mut correlation_id = event.correlation_id;
    if let Some(id) = &mut correlation_id {
        uuid_field(&format!("{field}.correlation_id"), id)?;
    }
    let typed = check_payload(&format!("{field}.payload"), payload)?;

    let mut envelope = Map::new();
    envelope.insert("id".into(), Value::String(message_id_text(id)));
    envelope.insert("event_type".into(), Value::String(event.event_type));
    envelope.insert("timestamp".into(), Value::String(rfc3339(&at)));
    let mut body = Map::new();
    body.insert("type".into(), Value::String(typed.type_name().into()));
    body.insert("data".into(), typed.data());
    envelope.insert("payload".into(), Value::Object(body));
    if let Some(correlation_id) = correlation_id {
        envelope.insert("correlation_id".into(), Value::String(correlation_id));
    }
    if let Some(source) = event.source {
        envelope.insert("source".into(), Value::String(source));
    }
    Ok(CheckedEvent {
        id,
        envelope: Value::Object(envelope),
    })
}

/// Reads a payload in either form into its typed form and checks it (`field` is the
/// payload's path, e.g. `event.payload`).
pub fn check_payload(field: &str, payload: proto::EventPayload) -> Result<TypedPayload, Status> {
    let named = payload.r#type.as_str();
    if !named.is_empty() && !PAYLOAD_TYPES.contains(&named) {
        return Err(invalid_field(
            format!("{field}.type"),
            format!("must be one of {PAYLOAD_TYPES:?}, got {named:?}"),
        ));
    }
    let data_field = format!("{field}.data");
    let data = payload
        .data
        .as_ref()
        .map(|data| value_to_json(data).map_err(|reason| invalid_field(&data_field, reason)))
        .transpose()?;

    let Some(member) = payload.event else {
        let typed = match named {
            "" => {
                return Err(invalid_field(
                    format!("{field}.type"),
                    "is required: \"User\", \"Order\" or \"Generic\" with `data`, or set one of \
                     `user`, `order` or `generic`",
                ));
            }
            "Generic" => TypedPayload::Generic(data.unwrap_or(Value::Null)),
            _ => {
                let data = data.ok_or_else(|| {
                    invalid_field(&data_field, format!("is required for a {named} event"))
                })?;
                read_data(named, &data_field, &data)?
            }
        };
        return Ok(typed);
    };

    let (typed, member_field) = match member {
        event_payload::Event::User(mut user) => {
            check_user(&format!("{field}.user"), &mut user)?;
            (TypedPayload::User(user), "user")
        }
        event_payload::Event::Order(mut order) => {
            check_order(&format!("{field}.order"), &mut order)?;
            (TypedPayload::Order(order), "order")
        }
        event_payload::Event::Generic(value) => {
            let json = value_to_json(&value)
                .map_err(|reason| invalid_field(format!("{field}.generic"), reason))?;
            (TypedPayload::Generic(json), "generic")
        }
    };
    if !named.is_empty() && named != typed.type_name() {
        return Err(invalid_field(
            format!("{field}.type"),
            format!("is {named:?} but `{member_field}` is set"),
        ));
    }
    // Given both forms (an event polled and sent on, say), they must say the same.
    if let Some(data) = data {
        let agrees = match &typed {
            TypedPayload::Generic(json) => *json == data,
            _ => read_data(typed.type_name(), &data_field, &data)? == typed,
        };
        if !agrees {
            return Err(invalid_field(
                data_field,
                format!("disagrees with `{member_field}`; give one of them"),
            ));
        }
    }
    Ok(typed)
}

/// Reads a User or Order event's `data` (JSON) into its typed message and checks it.
fn read_data(named: &str, field: &str, data: &Value) -> Result<TypedPayload, Status> {
    let mut object = JsonObject::new(field, data)?;
    let typed = if named == "User" {
        let mut user = proto::UserEvent {
            action: object.text("action", "action")?,
            user_id: object.text("user_id", "userId")?,
            email: object.text("email", "email")?,
            name: object.text("name", "name")?,
            ip_address: object.text("ip_address", "ipAddress")?,
        };
        object.finish()?;
        check_user(field, &mut user)?;
        TypedPayload::User(user)
    } else {
        let items = object.items()?;
        let mut order = proto::OrderEvent {
            action: object.text("action", "action")?,
            order_id: object.text("order_id", "orderId")?,
            user_id: object.text("user_id", "userId")?,
            items,
            total_amount: object.amount("total_amount", "totalAmount")?,
            currency: object.text("currency", "currency")?,
            status: object.text("status", "status")?,
            reason: object.text("reason", "reason")?,
            tracking_number: object.text("tracking_number", "trackingNumber")?,
            carrier: object.text("carrier", "carrier")?,
        };
        object.finish()?;
        check_order(field, &mut order)?;
        TypedPayload::Order(order)
    };
    Ok(typed)
}

/// A JSON object read key by key, as proto3 JSON reads a message: each field under its proto
/// name or its lowerCamelCase name (not both), `null` as absent, and no other keys.
struct JsonObject<'a> {
    field: &'a str,
    members: Map<String, Value>,
}

impl<'a> JsonObject<'a> {
    fn new(field: &'a str, value: &Value) -> Result<Self, Status> {
        match value {
            Value::Object(members) => Ok(Self {
                field,
                members: members.clone(),
            }),
            _ => Err(invalid_field(field, "must be a JSON object")),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.field)
    }

    /// The value under `name` or `json_name`; `None` when absent or null.
    fn take(&mut self, name: &str, json_name: &str) -> Result<Option<Value>, Status> {
        let proto_named = self.members.remove(name);
        let json_named = if json_name == name {
            None
        } else {
            self.members.remove(json_name)
        };
        match (proto_named, json_named) {
            (Some(_), Some(_)) => Err(invalid_field(
                self.path(name),
                format!("is given twice, as `{name}` and as `{json_name}`"),
            )),
            (Some(value), None) | (None, Some(value)) => Ok((!value.is_null()).then_some(value)),
            (None, None) => Ok(None),
        }
    }

    fn text(&mut self, name: &str, json_name: &str) -> Result<String, Status> {
        let value = self.take(name, json_name)?;
        self.as_text(name, value)
    }

    fn as_text(&self, name: &str, value: Option<Value>) -> Result<String, Status> {
        match value {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text),
            Some(_) => Err(invalid_field(self.path(name), "must be a string")),
        }
    }

    /// An amount: a decimal string. A JSON number is refused by name, since binary floating
    /// point cannot hold most prices exactly.
    fn amount(&mut self, name: &str, json_name: &str) -> Result<String, Status> {
        match self.take(name, json_name)? {
            Some(Value::Number(number)) => Err(invalid_field(
                self.path(name),
                format!(
                    "must be a decimal string such as \"{number}\", not a JSON number (binary \
                     floating point cannot hold most amounts exactly)"
                ),
            )),
            value => self.as_text(name, value),
        }
    }

    /// A count: a JSON integer, or a string of digits (proto3 JSON accepts both).
    fn count(&mut self, name: &str, json_name: &str) -> Result<u32, Status> {
        let path = self.path(name);
        let refuse = || invalid_field(&path, "must be an integer from 0 to 4294967295");
        match self.take(name, json_name)? {
            None => Ok(0),
            Some(Value::Number(number)) => number
                .as_u64()
                .or_else(|| {
                    // google.protobuf.Value keeps numbers as f64: 2.0 is the integer 2.
                    number
                        .as_f64()
                        .filter(|v| v.fract() == 0.0 && *v >= 0.0 && *v <= f64::from(u32::MAX))
                        .map(|v| v as u64)
                })
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(refuse),
            Some(Value::String(text)) => text.parse().map_err(|_| refuse()),
            Some(_) => Err(refuse()),
        }
    }

    fn items(&mut self) -> Result<Vec<proto::OrderItem>, Status> {
        let path = self.path("items");
        let items = match self.take("items", "items")? {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(invalid_field(path, "must be an array of items")),
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let field = format!("{path}[{index}]");
                let mut line = JsonObject::new(&field, item)?;
                let item = proto::OrderItem {
                    product_id: line.text("product_id", "productId")?,
                    quantity: line.count("quantity", "quantity")?,
                    unit_price: line.amount("unit_price", "unitPrice")?,
                };
                line.finish()?;
                Ok(item)
            })
            .collect()
    }

    /// Refuses a key that names no field, as a request body would.
    fn finish(self) -> Result<(), Status> {
        match self.members.keys().next() {
            Some(key) => Err(invalid_field(
                self.path(key),
                "is not a field of this event",
            )),
            None => Ok(()),
        }
    }
}

/// Checks a User event, its ids written in the canonical form as they are checked.
fn check_user(field: &str, user: &mut proto::UserEvent) -> Result<(), Status> {
    let at = |name: &str| format!("{field}.{name}");
    let action = action(&at("action"), &user.action, &USER_ACTIONS)?;
    let shape = |name, given| takes(field, "User", action, name, given);
    if shape("user_id", !user.user_id.is_empty())? {
        uuid_field(&at("user_id"), &mut user.user_id)?;
    }
    if shape("email", !user.email.is_empty())? {
        email(&at("email"), &user.email)?;
    }
    if shape("name", !user.name.is_empty())? {
        text(&at("name"), &user.name)?;
    }
    if shape("ip_address", !user.ip_address.is_empty())?
        && user.ip_address.parse::<std::net::IpAddr>().is_err()
    {
        return Err(invalid_field(
            at("ip_address"),
            "must be an IPv4 or IPv6 address",
        ));
    }
    Ok(())
}

/// Checks an Order event, its ids written in the canonical form as they are checked.
fn check_order(field: &str, order: &mut proto::OrderEvent) -> Result<(), Status> {
    let at = |name: &str| format!("{field}.{name}");
    let action = action(&at("action"), &order.action, &ORDER_ACTIONS)?;
    let shape = |name, given| takes(field, "Order", action, name, given);
    if shape("order_id", !order.order_id.is_empty())? {
        uuid_field(&at("order_id"), &mut order.order_id)?;
    }
    if shape("user_id", !order.user_id.is_empty())? {
        uuid_field(&at("user_id"), &mut order.user_id)?;
    }
    if shape("items", !order.items.is_empty())? {
        for (index, item) in order.items.iter_mut().enumerate() {
            let line = at(&format!("items[{index}]"));
            uuid_field(&format!("{line}.product_id"), &mut item.product_id)?;
            if item.quantity == 0 {
                return Err(invalid_field(
                    format!("{line}.quantity"),
                    "must be at least 1",
                ));
            }
            amount(&format!("{line}.unit_price"), &item.unit_price)?;
        }
    }
    if shape("total_amount", !order.total_amount.is_empty())? {
        amount(&at("total_amount"), &order.total_amount)?;
    }
    if shape("currency", !order.currency.is_empty())? {
        currency(&at("currency"), &order.currency)?;
    }
    if shape("status", !order.status.is_empty())? {
        one_of(&at("status"), &order.status, &ORDER_STATUSES)?;
    }
    for (name, value) in [
        ("reason", &order.reason),
        ("tracking_number", &order.tracking_number),
        ("carrier", &order.carrier),
    ] {
        if shape(name, !value.is_empty())? {
            text(&at(name), value)?;
        }
    }
    Ok(())
}

/// The action's entry in its table, or a refusal naming `field`.
fn action(field: &str, value: &str, table: &[Action]) -> Result<Action, Status> {
    if let Some(action) = table.iter().find(|(name, _, _)| *name == value) {
        return Ok(*action);
    }
    let names: Vec<&str> = table.iter().map(|(name, _, _)| *name).collect();
    Err(not_one_of(field, value, &names))
}

/// Whether the action takes field `name` and it is `given`: a required field missing or a
/// field the action does not take is refused, naming it.
fn takes(field: &str, kind: &str, action: Action, name: &str, given: bool) -> Result<bool, Status> {
    let (label, required, optional) = action;
    let path = format!("{field}.{name}");
    if required.contains(&name) && !given {
        let what = if name == "items" {
            "at least one item"
        } else {
            "it"
        };
        return Err(invalid_field(
            path,
            format!("is required: a {label} {kind} event needs {what}"),
        ));
    }
    if given && !required.contains(&name) && !optional.contains(&name) {
        return Err(invalid_field(
            path,
            format!(
                "is not a field of a {label} {kind} event, which takes {:?}",
                [required, optional].concat()
            ),
        ));
    }
    Ok(given)
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), Status> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(not_one_of(field, value, allowed))
    }
}

/// The refusal of a value that is none of `allowed`.
fn not_one_of(field: &str, value: &str, allowed: &[&str]) -> Status {
    if value.is_empty() {
        invalid_field(field, format!("is required: one of {allowed:?}"))
    } else {
        invalid_field(field, format!("must be one of {allowed:?}, got {value:?}"))
    }
}

/// A UUID (not the nil one), rewritten in its canonical form (lower case, hyphenated), as the
/// original service stored its typed ids: one id is one string, however it was written
/// (upper case, braced, `urn:uuid:`, without hyphens).
fn uuid_field(field: &str, value: &mut String) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid_field(field, "is required (a UUID)"));
    }
    match uuid::Uuid::try_parse(value) {
        Ok(id) if id.is_nil() => Err(invalid_field(field, "must not be the nil UUID")),
        Ok(id) => {
            *value = id.hyphenated().to_string();
            Ok(())
        }
        Err(err) => Err(invalid_field(field, format!("must be a UUID: {err}"))),
    }
}

fn text(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
        return Err(invalid_field(
            field,
            format!("must be 1 to {MAX_TEXT_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A sane address, not RFC 5322 in full: `local@domain`, the local part of letters, digits and
/// `!#$%&'*+-/=?^_`{|}~.` (no leading, trailing or doubled dot), the domain two or more DNS
/// labels (an internationalised one in its `xn--` form).
fn email(field: &str, value: &str) -> Result<(), Status> {
    let refuse = |why: &str| {
        Err(invalid_field(
            field,
            format!("must be an e-mail address: {why}"),
        ))
    };
    if value.is_empty() {
        return Err(invalid_field(field, "is required (an e-mail address)"));
    }
    if value.len() > MAX_EMAIL_LEN {
        return refuse("at most 254 bytes");
    }
    let Some((local, domain)) = value.split_once('@') else {
        return refuse("no `@`");
    };
    if domain.contains('@') {
        return refuse("more than one `@`");
    }
    let local_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty()
        || local.len() > MAX_EMAIL_LOCAL_LEN
        || !local.chars().all(local_char)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return refuse("the part before `@` is not a valid mailbox name");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |label: &&str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let top_level_ok = labels
        .last()
        .is_some_and(|top| !top.chars().all(|c| c.is_ascii_digit()));
    if labels.len() < 2 || !labels.iter().all(label_ok) || !top_level_ok {
        return refuse("the part after `@` is not a domain name");
    }
    Ok(())
}

/// A non-negative decimal string: digits, optionally a point and more digits.
fn amount(field: &str, value: &str) -> Result<(), Status> {
    let (integer, fraction) = match value.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (value, None),
    };
    let digits = |part: &str, most: usize| {
        (1..=most).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    let fraction_ok = fraction.is_none_or(|f| digits(f, MAX_AMOUNT_FRACTION_DIGITS));
    if value.is_empty() {
        return Err(invalid_field(
            field,
            "is required (a decimal string such as \"29.99\")",
        ));
    }
    if !digits(integer, MAX_AMOUNT_INTEGER_DIGITS) || !fraction_ok {
        return Err(invalid_field(
            field,
            format!(
                "must be a non-negative decimal string such as \"29.99\" (at most \
                 {MAX_AMOUNT_INTEGER_DIGITS} digits before the point and \
                 {MAX_AMOUNT_FRACTION_DIGITS} after), got {value:?}"
            ),
        ));
    }
    Ok(())
}

fn currency(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid_field(
            field,
            "is required (an ISO 4217 code such as \"EUR\")",
        ));
    }
    if !is_iso_4217(value) {
        return Err(invalid_field(
            field,
            format!(
                "must be an ISO 4217 currency code in upper case such as \"EUR\", got {value:?}"
            ),
        ));
    }
    Ok(())
}

/// Reads an event envelope back from a stored payload; `None` for anything else, including
/// JSON nested too deeply to render (a poison message must not fail the poll). The data comes
/// back as stored: events written before the rules, or by other clients, are not checked.
pub fn read_event(payload: &[u8]) -> Option<proto::Event> {
    let json: Value = serde_json::from_slice(payload).ok()?;
    if json_depth(&json) > MAX_STORED_JSON_DEPTH {
        return None;
    }
    let object = json.as_object()?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    let payload = object.get("payload")?.as_object()?;
    // What publishing checked: the data alone.
    if payload.get("data").map_or(0, json_depth) > MAX_JSON_DEPTH {
        return None;
    }
    Some(proto::Event {
        id: text("id")?,
        event_type: text("event_type")?,
        timestamp: Some(parse_rfc3339(&text("timestamp")?)?),
        payload: Some(proto::EventPayload {
            r#type: payload.get("type")?.as_str()?.to_owned(),
            data: Some(json_to_value(
                payload.get("data").cloned().unwrap_or(Value::Null),
            )),
            event: None,
        }),
        correlation_id: text("correlation_id"),
        source: text("source"),
    })
}

/// A timestamp as RFC 3339 text (`prost_types` writes it; the API's types are pbjson's twins).
fn rfc3339(at: &pbjson_types::Timestamp) -> String {
    prost_types::Timestamp {
        seconds: at.seconds,
        nanos: at.nanos,
    }
    .to_string()
}

/// `None` also for a time no JSON answer can write (stored before publishes were checked).
fn parse_rfc3339(text: &str) -> Option<pbjson_types::Timestamp> {
    let at: prost_types::Timestamp = text.parse().ok()?;
    let at = pbjson_types::Timestamp {
        seconds: at.seconds,
        nanos: at.nanos,
    };
    crate::proto::wkt::Timestamp(&at)
        .is_writable()
        .then_some(at)
}
