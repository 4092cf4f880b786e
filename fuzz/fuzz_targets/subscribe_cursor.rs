//! Subscription cursors (`MessageService.Subscribe` with `cursor` set): the base64 and HMAC checks
//! on arbitrary text, and, for bodies the target signs with the gateway's secret itself, the
//! decoding of the cursor body (version byte, then postcard with its compact positions) and
//! the checks made before resuming (scope, consumer, topic incarnation, purged partitions).
//!
//! Input: `[mode][partition]` then the cursor. Mode bit 0: 0 = the rest is the cursor text as
//! sent by a client; 1 = the rest is a cursor body, signed here. Mode bit 1: with consumer "c".
//! Mode bits 2..5: polling strategy (proto value, mod 6). Mode bits 5..8: commit_every.
//! `partition` 0xff: all partitions, else that partition (mod 4).
//!
//! Invariants: answers are never INTERNAL/UNKNOWN; every cursor the subscription issues
//! verifies under the secret, carries the current version, and is accepted back by a new
//! subscription that sends only it.
#![no_main]

use base64::Engine;
use hmac::{Hmac, Mac};
use iggy_gateway::proto::{self, message_service_server::MessageService};
use iggy_gateway_fuzz::{CURSOR_SECRET, Gateway, PARTITIONS};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tonic::Code;

/// The version byte of the cursors the gateway issues (`src/grpc/subscribe.rs`).
const CURSOR_VERSION: u8 = 2;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn sign(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(CURSOR_SECRET).expect("key");
    mac.update(body);
    let mut bytes = body.to_vec();
    bytes.extend(mac.finalize().into_bytes());
    B64.encode(bytes)
}

fn verify(text: &str) {
    let bytes = B64.decode(text).expect("issued cursor is base64");
    assert!(bytes.len() > 33, "issued cursor too short");
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(CURSOR_SECRET).expect("key");
    mac.update(body);
    mac.verify_slice(tag).expect("issued cursor verifies");
    assert_eq!(body[0], CURSOR_VERSION, "cursor version");
}

fuzz_target!(|data: &[u8]| {
    let [mode, partition, rest @ ..] = data else {
        return;
    };
    let cursor_text = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        sign(rest)
    };
    let consumer = if mode & 2 != 0 { "c" } else { "" };
    let strategy = (mode >> 2) % 6;
    let partition_id = (*partition != 0xff).then_some(u32::from(*partition) % (PARTITIONS + 1));
    let request = proto::SubscribeRequest {
        stream: "s".into(),
        topic: "t".into(),
        partition_id,
        consumer: consumer.into(),
        strategy: i32::from(strategy),
        offset: (strategy == 1).then_some(1),
        timestamp: (strategy == 2).then_some(pbjson_types::Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        cursor: cursor_text,
        commit_every: u32::from(mode >> 5),
        commit_interval_ms: 0,
    };

    let runtime = iggy_gateway_fuzz::runtime();
    runtime.block_on(async {
        let gateway = Gateway::new();
        let started = gateway
            .messages
            .subscribe(tonic::Request::new(request))
            .await;
        let mut receiver = match started {
            // The service's stream of answers, each with its cursor.
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{status:?}"
                );
                return;
            }
        };
        for _ in 0..2 {
            let item = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                futures_util::StreamExt::next(&mut receiver),
            )
            .await;
            let Ok(Some(item)) = item else {
                break;
            };
            let item = match item {
                Ok(item) => item,
                Err(status) => {
                    assert!(
                        !matches!(status.code(), Code::Internal | Code::Unknown),
                        "{status:?}"
                    );
                    break;
                }
            };
            verify(&item.cursor);
            // Sent back alone, an issued cursor resumes its subscription.
            let resume = proto::SubscribeRequest {
                stream: "s".into(),
                topic: "t".into(),
                cursor: item.cursor.clone(),
                ..Default::default()
            };
            if let Err(status) = gateway
                .messages
                .subscribe(tonic::Request::new(resume))
                .await
            {
                panic!("an issued cursor was refused: {status:?}");
            }
        }
    });
});
