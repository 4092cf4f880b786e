//! The per-method half of the scope check: each service method names the streams and topics
//! its request addresses ([`Want`]), once it has validated them, and [`authorize`] checks the
//! call's [`Access`] (set by the scope layer) on them. Requests may name a stream or topic by
//! numeric id; patterns match names, so for a key with limited scopes an id is first looked up
//! (one broker call), and an id that names nothing is refused like a name out of scope, so a key
//! cannot learn what exists outside its scopes.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    answer::{ERROR_DOMAIN, Rejection, consumer_not_allowed, scope_missing},
    broker::{Broker, BrokerError, Identifier, TopicRef},
    identity::{Access, Class, Held, Refusal, Revoked, Taken, Target},
    subscription::Flow,
};

/// A stream of answers the service hands to tonic.
pub(super) type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A subscription's answers for a keys-file identity: ended with an error as soon as a reload
/// revokes the key (or takes the scope on `target` away) or the key expires, and paced while the
/// identity's consume bytes are overdrawn; `size` tells what each answer counts. Other callers
/// get their answers as they come.
pub(super) fn guard_stream<T: Send + 'static>(
    answers: Answers<T>,
    access: Option<Arc<Access>>,
    target: Target,
    consumer: Option<String>,
    size: fn(&T) -> usize,
    flow: Arc<Flow>,
) -> Answers<T> {
    let Some(access) = access.filter(|access| !access.is_unrestricted()) else {
        return answers;
    };
    let revoked: Pin<Box<dyn std::future::Future<Output = Revoked> + Send>> = {
        let (access, consumer) = (Arc::clone(&access), consumer.clone());
        Box::pin(async move { access.revoked(target, consumer).await })
    };
    struct State<T> {
        answers: Answers<T>,
        access: Arc<Access>,
        revoked: Pin<Box<dyn std::future::Future<Output = Revoked> + Send>>,
        consumer: Option<String>,
        flow: Arc<Flow>,
        done: bool,
    }
    let state = State {
        answers,
        access,
        revoked,
        consumer,
        flow,
        done: false,
    };
    Box::pin(stream::unfold(state, move |mut state| async move {
        if state.done {
            return None;
        }
        if let Some(wait) = state.access.pause(Class::Consume) {
            // On purpose: the pump must not take this reader for one that stopped reading.
            let revoked = Arc::clone(&state.flow)
                .paused(async {
                    tokio::select! {
                        why = &mut state.revoked => Some(why),
                        () = tokio::time::sleep(wait) => None,
                    }
                })
                .await;
            if let Some(why) = revoked {
                state.done = true;
                return Some((
                    Err(revoked_status(
                        &state.access,
                        why,
                        state.consumer.as_deref(),
                    )),
                    state,
                ));
            }
        }
        tokio::select! {
            biased;
            why = &mut state.revoked => {
                state.done = true;
                Some((Err(revoked_status(&state.access, why, state.consumer.as_deref())), state))
            }
            answer = state.answers.next() => {
                let answer = answer?;
                match &answer {
                    Ok(item) => charge(Some(&state.access), Class::Consume, size(item)),
                    Err(_) => state.done = true,
                }
                Some((answer, state))
            }
        }
    }))
}

/// `answers`, ended with DEADLINE_EXCEEDED at `at`: the deadline the client asked for
/// (`grpc-timeout`, `Connect-Timeout-Ms`), which the timeout layer holds only until the answer
/// begins.
pub(super) fn until_deadline<T: Send + 'static>(
    answers: Answers<T>,
    at: tokio::time::Instant,
) -> Answers<T> {
    let deadline = Box::pin(tokio::time::sleep_until(at));
    Box::pin(stream::unfold(
        (answers, deadline, false),
        |(mut answers, mut deadline, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                () = &mut deadline => {
                    let ended = Rejection::new(
                        Code::DeadlineExceeded,
                        "DEADLINE_EXCEEDED",
                        "the stream reached the deadline its client asked for",
                    )
                    .status();
                    Some((Err(ended), (answers, deadline, true)))
                }
                answer = answers.next() => {
                    let answer = answer?;
                    let done = answer.is_err();
                    Some((answer, (answers, deadline, done)))
                }
            }
        },
    ))
}

/// How a revoked subscription ends.
fn revoked_status(access: &Access, why: Revoked, consumer: Option<&str>) -> Status {
    let name = access.identity().name();
    let (code, reason, message) = match why {
        Revoked::KeyRemoved => (
            Code::Unauthenticated,
            "API_KEY_REVOKED",
            format!("the API key '{name}' was revoked"),
        ),
        Revoked::Expired => (
            Code::Unauthenticated,
            "API_KEY_EXPIRED",
            format!("the API key '{name}' has expired"),
        ),
        Revoked::ScopeLost => {
            tracing::info!(target: crate::identity::AUDIT, identity = name,
                method = %access.rpc().name, target = access.target().as_str(),
                request_id = access.request_id(), result = "PERMISSION_DENIED",
                "open call ended: scope withdrawn");
            return scope_missing(name, access.rpc().scope.as_str(), &access.target());
        }
        Revoked::ConsumerLost => {
            tracing::info!(target: crate::identity::AUDIT, identity = name,
                method = %access.rpc().name, target = access.target().as_str(),
                request_id = access.request_id(), result = "PERMISSION_DENIED",
                "open call ended: consumer withdrawn");
            return consumer_not_allowed(name, consumer.unwrap_or_default());
        }
    };
    tracing::info!(target: crate::identity::AUDIT, identity = name,
        method = %access.rpc().name, target = access.target().as_str(),
        request_id = access.request_id(), result = reason, "open call ended: key revoked");
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason,
        ERROR_DOMAIN,
        [("identity".to_owned(), name.to_owned())],
    );
    Status::with_error_details(code, message, details)
}

/// Charges what a call moved to its identity's byte quota (and per-identity metrics).
pub(super) fn charge(access: Option<&Access>, class: Class, bytes: usize) {
    if let Some(access) = access {
        access.charge(class, bytes as u64);
    }
}

/// Charges what a call is about to move to its identity's byte quota, unless that quota is
/// overdrawn already: then RESOURCE_EXHAUSTED, `QUOTA_EXCEEDED`, and nothing may be moved.
/// Kept (and counted) when dropped, unless given back by [`refund`] or [`refund_failed`].
pub(super) fn take(
    access: Option<&Access>,
    class: Class,
    bytes: usize,
) -> Result<Option<Taken<'_>>, Status> {
    match access {
        Some(access) => access
            .take(class, bytes as u64)
            .map(Some)
            .map_err(|throttle| {
                Rejection::quota_exceeded(access.identity().name(), throttle).status()
            }),
        None => Ok(None),
    }
}

/// Gives back what [`take`] charged, for a call that moved nothing after all.
pub(super) fn refund(taken: Option<Taken<'_>>) {
    if let Some(taken) = taken {
        taken.refund();
    }
}

/// Gives back what [`take`] charged for a send the backend failed, unless it may have been
/// stored all the same (no answer in time).
pub(super) fn refund_failed(taken: Option<Taken<'_>>, failed: &BrokerError) {
    if !matches!(failed, BrokerError::Timeout(_)) {
        refund(taken);
    }
}

/// What one request addresses, as validated.
pub(super) enum Want<'a> {
    /// Nothing in particular (a listing, the statistics).
    Any,
    /// A whole stream: create, rename, delete, purge.
    Stream(&'a Identifier),
    /// A stream a new one is created as or renamed to.
    NewStream(&'a str),
    /// Looking into a stream: get it, list its topics.
    StreamView(&'a Identifier),
    /// One topic.
    Topic(&'a TopicRef),
    /// A topic created or renamed in a stream.
    NewTopic(&'a Identifier, &'a str),
}

/// The call's authorization, when it came through the scope layer.
pub(super) fn access_of<T>(request: &Request<T>) -> Option<Arc<Access>> {
    request.extensions().get::<Arc<Access>>().cloned()
}

/// Checks the call's scope on everything `wants` names; refuses with PERMISSION_DENIED
/// (`SCOPE_MISSING`, naming the scope and the target) otherwise.
pub(super) async fn authorize(
    broker: &dyn Broker,
    access: Option<&Access>,
    wants: &[Want<'_>],
) -> Result<(), Status> {
    let Some(access) = access else {
        return Err(no_access());
    };
    let mut targets = Vec::with_capacity(wants.len());
    for want in wants {
        targets.push(resolve(broker, access, want).await?);
    }
    access.check(&targets).map_err(|refusal| match refusal {
        Refusal::Held(held) => held_back(access, held),
        Refusal::Consumer(consumer) => consumer_not_allowed(access.identity().name(), &consumer),
        Refusal::Scope(target) => {
            // Said as the request named it: a key must not learn the name behind an id it may
            // not see (the audit line has the name).
            let named = targets
                .iter()
                .position(|resolved| *resolved == target)
                .and_then(|at| wants.get(at))
                .map(as_named);
            refused(access, named.as_ref().unwrap_or(&target))
        }
    })
}

/// What `want` names, as the request named it: ids as ids.
fn as_named(want: &Want<'_>) -> Target {
    match want {
        Want::Any => Target::Any,
        Want::Stream(stream) => Target::Stream(stream.to_string()),
        Want::NewStream(name) => Target::Stream((*name).to_owned()),
        Want::StreamView(stream) => Target::StreamView(stream.to_string()),
        Want::Topic(at) => Target::Topic(at.stream.to_string(), at.topic.to_string()),
        Want::NewTopic(stream, name) => Target::Topic(stream.to_string(), (*name).to_owned()),
    }
}

/// A call that answers for every stream at once (statistics): its scope on all of them.
pub(super) fn authorize_all(access: Option<&Access>) -> Result<(), Status> {
    match access {
        Some(access) => access
            .check(&[Target::All])
            .map_err(|refusal| refusal_status(access, refusal)),
        None => Err(no_access()),
    }
}

/// A call that names a consumer: the key's `consumers` must allow it (after its target).
pub(super) fn authorize_consumer(access: Option<&Access>, consumer: &str) -> Result<(), Status> {
    match access {
        Some(access) => access
            .check_consumer(consumer)
            .map_err(|refusal| refusal_status(access, refusal)),
        None => Err(no_access()),
    }
}

fn refusal_status(access: &Access, refusal: Refusal) -> Status {
    match refusal {
        Refusal::Held(held) => held_back(access, held),
        Refusal::Scope(target) => refused(access, &target),
        Refusal::Consumer(consumer) => consumer_not_allowed(access.identity().name(), &consumer),
    }
}

/// Every call that reaches a service came through the scope policy, which gives it an
/// [`Access`] (unrestricted keys included): one without is refused, never let through.
fn no_access() -> Status {
    tracing::error!("a call reached its service without an access check; refused");
    Status::permission_denied("the call was not admitted by the scope policy")
}

/// A refusal by a key over its share of the rate limit, which refusals draw on.
fn held_back(access: &Access, held: Held) -> Status {
    Rejection::identity_rate_limited(
        access.identity().name(),
        held.per_second,
        held.burst,
        held.wait,
    )
    .status()
}

/// An id that names nothing, refused as a name out of scope is: charged as a refusal.
fn refused_id(access: &Access, target: &Target) -> Status {
    match access.charge_refusal() {
        Ok(()) => refused(access, target),
        Err(held) => held_back(access, held),
    }
}

fn refused(access: &Access, target: &Target) -> Status {
    scope_missing(
        access.identity().name(),
        access.rpc().scope.as_str(),
        &target.to_string(),
    )
}

/// A stream's name as patterns see it: the name itself, or the name behind an id.
async fn stream_name(
    broker: &dyn Broker,
    access: &Access,
    stream: &Identifier,
) -> Result<String, Status> {
    match stream {
        Identifier::Name(name) => Ok(name.clone()),
        Identifier::Id(_) if access.is_unrestricted() => Ok(stream.to_string()),
        Identifier::Id(_) => match broker.get_stream(stream.clone()).await {
            Ok(info) => Ok(info.name),
            Err(_) => Err(refused_id(access, &Target::Stream(stream.to_string()))),
        },
    }
}

async fn resolve(broker: &dyn Broker, access: &Access, want: &Want<'_>) -> Result<Target, Status> {
    Ok(match want {
        Want::Any => Target::Any,
        Want::Stream(stream) => Target::Stream(stream_name(broker, access, stream).await?),
        Want::NewStream(name) => Target::Stream((*name).to_owned()),
        Want::StreamView(stream) => Target::StreamView(stream_name(broker, access, stream).await?),
        Want::NewTopic(stream, name) => Target::Topic(
            stream_name(broker, access, stream).await?,
            (*name).to_owned(),
        ),
        Want::Topic(at) => {
            let stream = stream_name(broker, access, &at.stream).await?;
            let topic = match &at.topic {
                Identifier::Name(name) => name.clone(),
                Identifier::Id(_) if access.is_unrestricted() => at.topic.to_string(),
                Identifier::Id(_) => match broker.get_topic((*at).clone()).await {
                    Ok(info) => info.name,
                    // As the request named them: the stream's name is not the key's to learn.
                    Err(_) => {
                        return Err(refused_id(
                            access,
                            &Target::Topic(at.stream.to_string(), at.topic.to_string()),
                        ));
                    }
                },
            };
            Target::Topic(stream, topic)
        }
    })
}
