use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinHandle};

use super::{Coalescer, Lane, SendBatching, Sender};
use crate::broker::{BrokerError, BrokerResult, Identifier, Partitioning, SendCounts, TopicRef};

/// A message of the fake backend: (caller, index within the caller's call).
type Msg = (u32, u32);

/// An index that makes the fake backend refuse the whole batch holding it.
const POISON: u32 = u32::MAX;
/// An index that makes the fake backend's send panic.
const PANIC: u32 = u32::MAX - 1;
/// Bytes each message counts for against the byte cap.
const MSG_BYTES: usize = 10;

/// A backend that stores batches whole or refuses them whole, as Iggy does, and holds every
/// send until the test lets it go; balanced sends get one partition per send, round-robin.
struct Backend {
    stored: Mutex<Vec<(Lane, Vec<Msg>, u32)>>,
    started: AtomicUsize,
    gate: Semaphore,
    next_partition: AtomicU32,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            stored: Mutex::default(),
            started: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            next_partition: AtomicU32::new(0),
        }
    }
}

impl Backend {
    fn stored(&self) -> Vec<(Lane, Vec<Msg>, u32)> {
        self.stored.lock().expect("lock").clone()
    }
}

fn coalescer(
    backend: &Arc<Backend>,
    settings: SendBatching,
    max_sending: usize,
) -> Arc<Coalescer<Msg>> {
    let backend = Arc::clone(backend);
    let sender: Sender<Msg> = Arc::new(move |lane: Lane, messages: Vec<Msg>| {
        let backend = Arc::clone(&backend);
        Box::pin(async move {
            backend.started.fetch_add(1, Ordering::SeqCst);
            backend.gate.acquire().await.expect("gate open").forget();
            assert!(
                !messages.iter().any(|(_, index)| *index == PANIC),
                "the fake backend's send panics, as asked"
            );
            if messages.iter().any(|(_, index)| *index == POISON) {
                return Err(BrokerError::InvalidArgument {
                    field: "messages",
                    reason: "refused by the backend".into(),
                });
            }
            let partition = match lane.partitioning {
                Partitioning::Balanced => backend.next_partition.fetch_add(1, Ordering::SeqCst) % 3,
                Partitioning::PartitionId(id) => id,
                Partitioning::Key(_) => 0,
            };
            backend
                .stored
                .lock()
                .expect("lock")
                .push((lane, messages, partition));
            Ok(())
        }) as super::SendFuture
    });
    Arc::new(Coalescer::new(sender, settings, max_sending))
}

fn lane(partitioning: Partitioning) -> Lane {
    Lane {
        topic: TopicRef {
            stream: Identifier::Name("s".into()),
            topic: Identifier::Name("t".into()),
        },
        partitioning,
    }
}

fn settings() -> SendBatching {
    SendBatching {
        enabled: true,
        linger: Duration::ZERO,
        max_messages: 1000,
        max_bytes: 1 << 20,
    }
}

/// Caller `caller` sends `count` messages (indexes 0..count) to `lane`.
fn call(
    coalescer: &Arc<Coalescer<Msg>>,
    lane: &Lane,
    caller: u32,
    count: u32,
) -> JoinHandle<BrokerResult<()>> {
    let messages: Vec<Msg> = (0..count).map(|index| (caller, index)).collect();
    send(coalescer, lane, messages)
}

fn send(
    coalescer: &Arc<Coalescer<Msg>>,
    lane: &Lane,
    messages: Vec<Msg>,
) -> JoinHandle<BrokerResult<()>> {
    let (coalescer, lane) = (Arc::clone(coalescer), lane.clone());
    let bytes = messages.len() * MSG_BYTES;
    tokio::spawn(async move { coalescer.send(lane, messages, bytes).await })
}

/// Waits (at most 5 s) until `ready` holds.
async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Queues calls behind a lane that is busy, one at a time so their order is known.
async fn queue_calls(
    coalescer: &Arc<Coalescer<Msg>>,
    lane: &Lane,
    calls: &[(u32, u32)],
) -> Vec<JoinHandle<BrokerResult<()>>> {
    let already = coalescer.waiting(lane);
    let mut handles = Vec::new();
    for (n, &(caller, count)) in calls.iter().enumerate() {
        handles.push(call(coalescer, lane, caller, count));
        until("the call to queue", || {
            coalescer.waiting(lane) == already + n + 1
        })
        .await;
    }
    handles
}

/// Starts a call that occupies one of the lane's senders, held at the backend's gate.
async fn occupy(
    coalescer: &Arc<Coalescer<Msg>>,
    backend: &Arc<Backend>,
    lane: &Lane,
    caller: u32,
) -> JoinHandle<BrokerResult<()>> {
    let started = backend.started.load(Ordering::SeqCst);
    let handle = call(coalescer, lane, caller, 1);
    until("the send to start", || {
        backend.started.load(Ordering::SeqCst) == started + 1
    })
    .await;
    handle
}

async fn answers(handles: Vec<JoinHandle<BrokerResult<()>>>) -> Vec<BrokerResult<()>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("the call ran"));
    }
    out
}

fn messages_of(calls: &[(u32, u32)]) -> Vec<Msg> {
    calls
        .iter()
        .flat_map(|&(caller, count)| (0..count).map(move |index| (caller, index)))
        .collect()
}

#[tokio::test]
async fn calls_queued_behind_a_busy_lane_leave_as_one_batch_contiguous_and_in_call_order() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 1);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let queued = [(1, 2), (2, 3), (3, 1), (4, 2), (5, 2)];
    let handles = queue_calls(&coalescer, &balanced, &queued).await;
    backend.gate.add_permits(2);

    assert_eq!(first.await.expect("ran"), Ok(()));
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    let stored = backend.stored();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0].1, vec![(0, 0)]);
    assert_eq!(stored[1].1, messages_of(&queued));
    assert_eq!(coalescer.counts(), SendCounts { sends: 2, calls: 6 });
    // Balanced: the five coalesced calls went in one send, so to one partition.
    assert_eq!(stored[1].0.partitioning, Partitioning::Balanced);
    assert_eq!(coalescer.waiting(&balanced), 0);
}

#[tokio::test]
async fn with_nothing_on_its_way_a_call_leaves_at_once_alone() {
    let backend = Arc::new(Backend::default());
    backend.gate.add_permits(100);
    let coalescer = coalescer(&backend, settings(), 1);
    let balanced = lane(Partitioning::Balanced);
    for caller in 0..3 {
        assert_eq!(
            call(&coalescer, &balanced, caller, 2).await.expect("ran"),
            Ok(())
        );
    }
    let stored = backend.stored();
    assert_eq!(stored.len(), 3);
    // One partition per send, round-robin, as Iggy balances.
    let partitions: Vec<u32> = stored.iter().map(|(_, _, p)| *p).collect();
    assert_eq!(partitions, vec![0, 1, 2]);
    assert_eq!(coalescer.counts(), SendCounts { sends: 3, calls: 3 });
}

#[tokio::test]
async fn a_refused_batch_fails_every_caller_with_the_same_error_and_stores_none_of_them() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 1);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let mut handles = queue_calls(&coalescer, &balanced, &[(1, 2)]).await;
    handles.push(send(&coalescer, &balanced, vec![(2, 0), (2, POISON)]));
    until("the poisoned call to queue", || {
        coalescer.waiting(&balanced) == 2
    })
    .await;
    handles.extend(queue_calls(&coalescer, &balanced, &[(3, 1)]).await);
    backend.gate.add_permits(2);

    assert_eq!(first.await.expect("ran"), Ok(()));
    let refusal = Err(BrokerError::InvalidArgument {
        field: "messages",
        reason: "refused by the backend".into(),
    });
    assert_eq!(
        answers(handles).await,
        vec![refusal.clone(), refusal.clone(), refusal]
    );
    let stored = backend.stored();
    assert_eq!(stored.len(), 1, "only the first call's batch: {stored:?}");
    assert_eq!(stored[0].1, vec![(0, 0)]);
}

#[tokio::test]
async fn a_coalesced_batch_stays_within_the_message_and_byte_caps_and_never_splits_a_call() {
    let backend = Arc::new(Backend::default());
    let caps = SendBatching {
        max_messages: 5,
        max_bytes: 10 * MSG_BYTES,
        ..settings()
    };
    let coalescer = coalescer(&backend, caps, 1);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    // Messages: 2+2 fit, a third call of 2 would make 6 > 5; then 2+3 = 5 messages; then 7
    // alone (one call larger than the cap goes whole, alone); then 4.
    let queued = [(1, 2), (2, 2), (3, 2), (4, 3), (5, 7), (6, 4)];
    let handles = queue_calls(&coalescer, &balanced, &queued).await;
    backend.gate.add_permits(10);
    assert_eq!(first.await.expect("ran"), Ok(()));
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    let batches: Vec<Vec<Msg>> = backend.stored().into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(
        batches,
        vec![
            vec![(0, 0)],
            messages_of(&[(1, 2), (2, 2)]),
            messages_of(&[(3, 2), (4, 3)]),
            messages_of(&[(5, 7)]),
            messages_of(&[(6, 4)]),
        ]
    );

    // The byte cap alone: 10 messages' worth of bytes with room for many more messages.
    let backend = Arc::new(Backend::default());
    let caps = SendBatching {
        max_messages: 1000,
        max_bytes: 10 * MSG_BYTES,
        ..settings()
    };
    let coalescer = self::coalescer(&backend, caps, 1);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let queued = [(1, 4), (2, 4), (3, 4), (4, 6)];
    let handles = queue_calls(&coalescer, &balanced, &queued).await;
    backend.gate.add_permits(10);
    assert_eq!(first.await.expect("ran"), Ok(()));
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    let sizes: Vec<usize> = backend.stored().iter().map(|(_, m, _)| m.len()).collect();
    assert_eq!(sizes, vec![1, 8, 10]);
}

#[tokio::test]
async fn a_call_whose_caller_went_away_before_its_batch_left_is_never_sent() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 1);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let mut handles = queue_calls(&coalescer, &balanced, &[(1, 1), (2, 2), (3, 1)]).await;
    // Caller 2 gives up (a deadline, a cancelled request): its future is dropped.
    let gone = handles.remove(1);
    gone.abort();
    assert!(gone.await.expect_err("aborted").is_cancelled());
    backend.gate.add_permits(2);
    assert_eq!(first.await.expect("ran"), Ok(()));
    assert_eq!(answers(handles).await, vec![Ok(()), Ok(())]);
    let batches: Vec<Vec<Msg>> = backend.stored().into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(batches, vec![vec![(0, 0)], vec![(1, 0), (3, 0)]]);
    assert_eq!(coalescer.counts(), SendCounts { sends: 2, calls: 3 });
}

#[tokio::test]
async fn calls_coalesce_only_with_calls_of_the_same_topic_and_partitioning() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 1);
    let lanes = [
        lane(Partitioning::Key(b"alice".to_vec())),
        lane(Partitioning::Key(b"bob".to_vec())),
        lane(Partitioning::PartitionId(2)),
        lane(Partitioning::Balanced),
        Lane {
            topic: TopicRef {
                stream: Identifier::Name("s".into()),
                topic: Identifier::Name("other".into()),
            },
            partitioning: Partitioning::Balanced,
        },
    ];
    let mut firsts = Vec::new();
    for (n, lane) in lanes.iter().enumerate() {
        firsts.push(occupy(&coalescer, &backend, lane, 100 + n as u32).await);
    }
    // Callers 10·n + k send to lane n, interleaved across the lanes.
    let mut handles = Vec::new();
    for k in 0..3u32 {
        for (n, lane) in lanes.iter().enumerate() {
            let waiting = coalescer.waiting(lane);
            handles.push(call(&coalescer, lane, 10 * n as u32 + k, 2));
            until("the call to queue", || {
                coalescer.waiting(lane) == waiting + 1
            })
            .await;
        }
    }
    backend.gate.add_permits(100);
    for answer in answers(firsts)
        .await
        .into_iter()
        .chain(answers(handles).await)
    {
        assert_eq!(answer, Ok(()));
    }
    let stored = backend.stored();
    assert_eq!(stored.len(), 2 * lanes.len(), "{stored:?}");
    for (n, lane) in lanes.iter().enumerate() {
        let batches: Vec<&Vec<Msg>> = stored
            .iter()
            .filter(|(to, _, _)| to == lane)
            .map(|(_, m, _)| m)
            .collect();
        let n = n as u32;
        assert_eq!(
            batches,
            vec![
                &vec![(100 + n, 0)],
                &messages_of(&[(10 * n, 2), (10 * n + 1, 2), (10 * n + 2, 2)])
            ],
            "lane {lane:?}"
        );
    }
}

#[tokio::test]
async fn a_lane_has_as_many_sends_on_their_way_as_it_may_and_the_rest_wait() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 2);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let second = occupy(&coalescer, &backend, &balanced, 1).await;
    let handles = queue_calls(&coalescer, &balanced, &[(2, 1), (3, 1), (4, 1)]).await;
    assert_eq!(backend.started.load(Ordering::SeqCst), 2);
    backend.gate.add_permits(10);
    assert_eq!(answers(vec![first, second]).await, vec![Ok(()), Ok(())]);
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    // The three waiting calls left with the first sender to come free, as one batch (which
    // of the two senders stored first is up to the scheduler).
    let mut sizes: Vec<usize> = backend.stored().iter().map(|(_, m, _)| m.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 1, 3]);
}

#[tokio::test]
async fn a_linger_lets_calls_arriving_meanwhile_join_the_first_send() {
    let backend = Arc::new(Backend::default());
    backend.gate.add_permits(100);
    let lingering = SendBatching {
        linger: Duration::from_millis(200),
        ..settings()
    };
    let coalescer = coalescer(&backend, lingering, 1);
    let balanced = lane(Partitioning::Balanced);
    let handles = queue_calls(&coalescer, &balanced, &[(1, 1), (2, 1), (3, 1)]).await;
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    let batches: Vec<Vec<Msg>> = backend.stored().into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(batches, vec![vec![(1, 0), (2, 0), (3, 0)]]);
}

#[tokio::test]
async fn with_coalescing_off_every_call_is_a_send_of_its_own() {
    let backend = Arc::new(Backend::default());
    let off = SendBatching {
        enabled: false,
        ..settings()
    };
    let coalescer = coalescer(&backend, off, 1);
    let balanced = lane(Partitioning::Balanced);
    let handles: Vec<_> = (0..4)
        .map(|caller| call(&coalescer, &balanced, caller, 1))
        .collect();
    until("every send to start", || {
        backend.started.load(Ordering::SeqCst) == 4
    })
    .await;
    backend.gate.add_permits(4);
    for answer in answers(handles).await {
        assert_eq!(answer, Ok(()));
    }
    assert_eq!(backend.stored().len(), 4);
    assert_eq!(coalescer.counts(), SendCounts { sends: 4, calls: 4 });
}

#[tokio::test]
async fn a_send_that_panics_fails_its_calls_and_the_lane_goes_on_serving() {
    let backend = Arc::new(Backend::default());
    let coalescer = coalescer(&backend, settings(), 1);
    let balanced = lane(Partitioning::Balanced);
    let first = occupy(&coalescer, &backend, &balanced, 0).await;
    let mut handles = vec![send(&coalescer, &balanced, vec![(1, PANIC)])];
    until("the call to queue", || coalescer.waiting(&balanced) == 1).await;
    handles.extend(queue_calls(&coalescer, &balanced, &[(2, 1)]).await);
    // The first send and the panicking one (which carries calls 1 and 2) go through the gate.
    backend.gate.add_permits(2);
    assert_eq!(first.await.expect("ran"), Ok(()));
    for answer in answers(handles).await {
        assert!(
            matches!(answer, Err(BrokerError::Unavailable(_))),
            "{answer:?}"
        );
    }
    // The lane is not stuck: the next call leaves at once and is stored.
    backend.gate.add_permits(1);
    let next = tokio::time::timeout(Duration::from_secs(5), call(&coalescer, &balanced, 3, 1))
        .await
        .expect("the lane still sends");
    assert_eq!(next.expect("ran"), Ok(()));
    let batches: Vec<Vec<Msg>> = backend.stored().into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(batches, vec![vec![(0, 0)], vec![(3, 0)]]);
    assert_eq!(coalescer.waiting(&balanced), 0);
}
