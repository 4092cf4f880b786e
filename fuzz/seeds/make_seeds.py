#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ from the README examples, the .proto
route annotations and the project's tests. Re-running it rewrites the same files."""
import gzip, hashlib, os, re, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(os.path.dirname(HERE), "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- a minimal protobuf encoder -------------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n):
    return key(field, 0) + varint(n)


def f_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return key(field, 2) + varint(len(data)) + data


def f_double(field, x):
    return key(field, 1) + struct.pack("<d", x)


def value(v):
    """google.protobuf.Value"""
    if v is None:
        return f_varint(1, 0)
    if isinstance(v, bool):
        return f_varint(4, int(v))
    if isinstance(v, (int, float)):
        return f_double(2, float(v))
    if isinstance(v, str):
        return f_bytes(3, v)
    if isinstance(v, list):
        return f_bytes(6, b"".join(f_bytes(1, value(x)) for x in v))
    if isinstance(v, dict):
        return f_bytes(5, b"".join(f_bytes(1, f_bytes(1, k) + f_bytes(2, value(x))) for k, x in v.items()))
    raise TypeError(v)


def header(k, kind, v):
    # HeaderValue: string=1 bytes=2 int64=3 uint64=4 bool=5 double=6
    if kind == "string":
        hv = f_bytes(1, v)
    elif kind == "bytes":
        hv = f_bytes(2, v)
    elif kind == "int64":
        hv = f_varint(3, v)
    elif kind == "uint64":
        hv = f_varint(4, v)
    elif kind == "bool":
        hv = f_varint(5, v)
    else:
        hv = f_double(6, v)
    return f_bytes(2, f_bytes(1, k) + f_bytes(2, hv))  # map entry in Message.headers (field 2)


def message(id="", headers=b"", payload=None, text=None, json=None):
    out = b""
    if id:
        out += f_bytes(1, id)
    out += headers
    if payload is not None:
        out += f_bytes(3, payload)
    if json is not None:
        out += f_bytes(4, value(json))
    if text is not None:
        out += f_bytes(5, text)
    return out


def timestamp(seconds, nanos=0):
    return f_varint(1, seconds) + (f_varint(2, nanos) if nanos else b"")


# Requests, by (grpc_requests selector, proto_decode selector).
SEND = [
    f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(3, 0)
    + f_bytes(5, message(json={"order": 1001, "total": 59.98}))
    + f_bytes(5, message(text="plain text", headers=header("source", "string", "web"))),
    f_bytes(1, "payments") + f_bytes(2, "settled") + f_bytes(4, "customer-42")
    + f_bytes(5, message(id="6f1c2a3e-1111-4a2b-9c3d-0123456789ab", payload=b"\x00\x01raw",
                         headers=header("n", "int64", 7) + header("u", "uint64", 2**63)
                         + header("b", "bool", 1) + header("d", "double", 0.1)
                         + header("x", "bytes", b"\xff"))),
    f_bytes(1, "1") + f_bytes(2, "2")
    + f_bytes(5, message(json=[1, -0.0, 1e300, 5e-324, 0.1, "s", None, True, {"a": [{}]}])),
    f_bytes(1, "s") + f_bytes(2, "t") + f_bytes(5, message(json={"user": "ada", "action": "signup"}))
    + f_bytes(5, message(text="hello")),
]
POLL = [
    f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(5, 3) + f_varint(8, 10),
    f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(3, 2) + f_bytes(4, "c")
    + f_varint(5, 5) + f_varint(8, 10) + f_varint(9, 1),
    f_bytes(1, "s") + f_bytes(2, "t") + f_varint(5, 2) + f_bytes(7, timestamp(1700000000, 5))
    + f_varint(8, 1),
    f_bytes(1, "s") + f_bytes(2, "t") + f_varint(5, 1) + f_varint(6, 0) + f_varint(8, 100),
]
README_CURSOR = "AQZvcmRlcnMHY3JlYXRlZAABAAH_PzPCA0v1QDFlJrAnRyK1VIlJbJ4RbRHaXFrbEZ375Q"
SUBSCRIBE = [
    f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(3, 0) + f_varint(5, 3),
    f_bytes(1, "s") + f_bytes(2, "t") + f_bytes(4, "c") + f_varint(5, 5) + f_varint(9, 2)
    + f_varint(10, 100),
    f_bytes(1, "orders") + f_bytes(2, "created") + f_bytes(8, README_CURSOR),
]
STORE = [f_bytes(1, "s") + f_bytes(2, "t") + f_bytes(3, "c") + f_varint(4, 1) + f_varint(5, 3)]
GET_OFFSET = [f_bytes(1, "s") + f_bytes(2, "t") + f_bytes(3, "c") + f_varint(4, 1)]
EVENT = (f_bytes(1, "6f1c2a3e-1111-4a2b-9c3d-0123456789ab") + f_bytes(2, "user.created")
         + f_bytes(3, timestamp(1764064800))
         + f_bytes(4, f_bytes(1, "User") + f_bytes(2, value(
             {"action": "Created", "user_id": "u-1", "email": "ada@example.com", "name": "Ada"}))))
PUBLISH = [f_bytes(3, EVENT) + f_bytes(4, "u-1"), f_bytes(1, "orders") + f_bytes(2, "created") + f_bytes(3, EVENT)]
PUBLISH_BATCH = [f_bytes(3, EVENT) + f_bytes(3, EVENT)]
POLL_EVENTS = [f_varint(3, 2) + f_varint(4, 0) + f_varint(5, 10), f_bytes(1, "s") + f_bytes(2, "t")]
CREATE_STREAM = [f_bytes(1, "orders"), f_bytes(1, ""), f_bytes(1, "123"), f_bytes(1, "a\x01b")]
NAMED = [f_bytes(1, "orders"), f_bytes(1, "4294967296")]
UPDATE_STREAM = [f_bytes(1, "orders") + f_bytes(2, "orders-v2")]
CREATE_TOPIC = [
    f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(3, 3),
    f_bytes(1, "payments") + f_bytes(2, "settled") + f_varint(3, 3)
    + f_bytes(4, f_varint(1, 3600)) + f_varint(5, 1 << 30) + f_varint(6, 2) + f_varint(7, 1),
]
TOPIC = [f_bytes(1, "orders") + f_bytes(2, "created")]
UPDATE_TOPIC = [f_bytes(1, "orders") + f_bytes(2, "created") + f_bytes(3, "created-v2")
                + f_bytes(4, f_varint(1, 60))]
PARTITIONS = [f_bytes(1, "orders") + f_bytes(2, "created") + f_varint(3, 2)]

# grpc_requests selectors (see fuzz_targets/grpc_requests.rs)
GRPC = {0: CREATE_STREAM, 1: NAMED, 2: [b""], 3: UPDATE_STREAM, 4: NAMED, 5: NAMED,
        6: CREATE_TOPIC, 7: TOPIC, 8: NAMED, 9: UPDATE_TOPIC, 10: TOPIC, 11: TOPIC,
        12: PARTITIONS, 13: PARTITIONS, 14: SEND, 15: POLL, 16: STORE, 17: GET_OFFSET,
        18: GET_OFFSET, 19: SUBSCRIBE, 20: PUBLISH, 21: PUBLISH_BATCH, 22: POLL_EVENTS}
# proto_decode selectors (see fuzz_targets/proto_decode.rs)
DECODE = {0: SEND, 1: POLL, 2: SUBSCRIBE, 3: STORE, 4: GET_OFFSET, 5: GET_OFFSET, 6: PUBLISH,
          7: PUBLISH_BATCH, 8: POLL_EVENTS, 9: CREATE_STREAM, 10: NAMED, 11: [b""],
          12: UPDATE_STREAM, 13: NAMED, 14: NAMED, 15: CREATE_TOPIC, 16: TOPIC, 17: NAMED,
          18: UPDATE_TOPIC, 19: TOPIC, 20: TOPIC, 21: PARTITIONS, 22: PARTITIONS}


def record(selector, body):
    return bytes([selector]) + struct.pack("<H", len(body)) + body


def main():
    # proto_decode / grpc_requests
    for sel, bodies in DECODE.items():
        for b in bodies:
            write("proto_decode", bytes([sel]) + b)
    for sel, bodies in GRPC.items():
        for b in bodies:
            write("grpc_requests", record(sel, b))
    # sequences: create, send, poll, subscribe
    write("grpc_requests", record(0, CREATE_STREAM[0]) + record(6, CREATE_TOPIC[0])
          + record(14, SEND[0]) + record(15, POLL[0]) + record(19, SUBSCRIBE[0]))
    write("grpc_requests", record(14, SEND[3]) + record(19, SUBSCRIBE[1]) + record(16, STORE[0]))

    # path_template: every template in the .proto annotations, with matching paths
    templates = set()
    for name in os.listdir(os.path.join(ROOT, "proto/iggy/gateway/v1")):
        text = open(os.path.join(ROOT, "proto/iggy/gateway/v1", name)).read()
        templates.update(re.findall(r'(?:get|post|put|patch|delete): "([^"]+)"', text))
    paths = [
        "/v1/streams", "/v1/streams/orders", "/v1/streams/orders/topics/created/messages",
        "/v1/streams/orders/topics/created/messages:subscribe", "/v1/streams/orders:purge",
        "/v1/streams/or%2Fders/topics/cr%C3%A9ated/partitions/0/messages",
        "/v1/streams/orders/topics/created/consumers/c/offsets/2", "/messages", "/messages/batch",
        "/streams/sample-stream/topics/events/messages", "/v1/streams/%zz", "/v1/streams/%E2%82",
    ]
    for t in sorted(templates):
        write("path_template", t + "\n" + "\n".join(paths))
    for t in ["/v1/{name=streams/*}/items/{id}:get", "/a/**", "/{x=**}", "/v1/{a.b.c}/x:verb",
              "/{a=b/*/c}/d"]:
        write("path_template", t + "\n/v1/streams/s1/items/7:get\n/a/b/c\n/x/y\n/b/q/c/d")

    # names
    for n in ["orders", "created", "sample-stream", "events", "123", "0", "4294967295",
              "4294967296", "", "a" * 255, "a" * 256, "caf\u00e9", "a\u0085b", "tab\there",
              "1e3", " 1", "-1", "\u0661\u0662"]:
        write("names", n)

    # config_args: NUL-separated flags
    for args in [
        [], ["--help"], ["--version"], ["--port", "8080", "--host", "0.0.0.0"],
        ["--api-key", "key-one-abcdef, key-two-abcdef", "--api-key-query-param", "true"],
        ["--trusted-proxies", "10.0.0.0/8,fd00::/8", "--rate-limit-rps", "0"],
        ["--iggy-connection-string", "iggy://iggy:iggy@localhost:8090", "--iggy-pool-size", "8",
         "--reconnect-base-delay-ms", "5000", "--reconnect-max-delay-ms", "100"],
        ["--data-dir", ":memory:", "--iggy-stream", "123", "--iggy-topic", ""],
        ["--cors-allowed-origins", "*", "--auth-bypass-paths", "/healthz,/metrics"],
        ["--max-connections", "0", "--metrics-port", "65535", "--log-format", "json"],
        ["--cursor-secret", "s3cr3t", "--max-subscribers", "0", "--subscribe-heartbeat-ms", "1"],
        ["--max-request-body-size", "4294967295", "--max-message-size", "0", "--print-config"],
        ["--port=99999"], ["--shutdown-timeout", "-1"],
    ]:
        write("config_args", "\0".join(args))

    # rest_transcode / layers: README curl examples
    J = "content-type: application/json"
    reqs = [
        f"POST /v1/streams\n{J}\n\n" '{"name":"orders"}',
        f"POST /v1/streams/orders/topics\n{J}\n\n" '{"name":"created","partitions_count":3}',
        f"POST /v1/streams/orders/topics/created/messages\n{J}\n\n"
        '{"partition_id":0,"messages":[{"json":{"order":1001,"total":59.98}},{"text":"plain text","headers":{"source":{"string_value":"web"}}}]}',
        "GET /v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy=POLLING_STRATEGY_FIRST",
        "GET /v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=POLLING_STRATEGY_FIRST\naccept: text/event-stream",
        f"GET /v1/streams/orders/topics/created/messages:subscribe?strategy=POLLING_STRATEGY_FIRST\nlast-event-id: {README_CURSOR}",
        f"POST /messages\n{J}\n\n"
        '{"event":{"id":"6f1c2a3e-1111-4a2b-9c3d-0123456789ab","event_type":"user.created","timestamp":"2026-11-25T10:00:00Z","payload":{"type":"User","data":{"action":"Created","user_id":"u-1","email":"ada@example.com","name":"Ada"}}},"partition_key":"u-1"}',
        "GET /messages?partition_id=2&offset=0&count=10",
        "GET /streams",
        f"PATCH /v1/streams/orders\n{J}\n\n" '{"name":"orders-v2"}',
        f"PUT /v1/streams/orders/topics/created/consumers/c/offsets/1\n{J}\n\n" '{"offset":"3"}',
        "DELETE /v1/streams/orders/topics/created/consumers/c/offsets/1",
        f"POST /v1/streams/orders/topics/created/partitions/1/messages\n{J}\n\n" '[{"text":"x","id":"6f1c2a3e-1111-4a2b-9c3d-0123456789ab"}]',
        f"POST /v1/streams/orders:purge\n{J}\n\n" "{}",
        "GET /openapi.json",
        "GET /v1/streams/orders/topics/created/messages?timestamp=2026-11-25T10:00:00Z&strategy=2&auto_commit=1&consumer=c",
    ]
    for r in reqs:
        write("rest_transcode", r)
    write("rest_transcode", "\n====\n".join(reqs[:5]))
    auth = ["x-api-key: fuzz-key-1", "authorization: Bearer fuzz-key-2", "x-api-key: wrong"]
    for i, r in enumerate(reqs[:8]):
        head, sep, body = r.partition("\n\n")
        write("layers", head + "\n" + auth[i % 3] + "\nx-forwarded-for: 203.0.113.9, 10.0.0.2\nx-request-id: req-1" + sep + body)
    write("layers", "GET /v1/streams/orders?api_key=fuzz-key-1&x=1\nforwarded: for=198.51.100.1")
    write("layers", "OPTIONS /v1/streams\norigin: https://example.com\naccess-control-request-method: POST")
    write("layers", "POST /iggy.gateway.v1.StreamService/ListStreams\ncontent-type: application/grpc\nte: trailers\ngrpc-timeout: 10m\nx-api-key: fuzz-key-1\n\n\x00\x00\x00\x00\x00")
    write("layers", "GET /healthz\n====\nGET /v1/streams\nx-api-key: bad\n====\nGET /v1/streams/x\nx-api-key: bad")

    # subscribe_cursor: [mode][partition] + cursor text, or (mode bit 0) a body signed by the target
    def pstr(s):
        return varint(len(s)) + s.encode()
    def body(stream, topic, consumer, nxt):
        out = bytes([1]) + pstr(stream) + pstr(topic) + pstr(consumer) + varint(len(nxt))
        for p, o in nxt:
            out += varint(p) + varint(o)
        return out
    write("subscribe_cursor", bytes([0, 0xFF]) + README_CURSOR.encode())
    write("subscribe_cursor", bytes([0, 0]) + b"not a cursor")
    for mode in (1, 1 | 8, 3 | 16, 3 | 4 | 32):
        write("subscribe_cursor", bytes([mode, 0xFF]) + body("s", "t", "c" if mode & 2 else "", [(0, 5), (2, 9)]))
        write("subscribe_cursor", bytes([mode, 1]) + body("s", "t", "c" if mode & 2 else "", [(1, 0)]))
    write("subscribe_cursor", bytes([1, 0xFF]) + body("s", "t", "", [(0, 2**64 - 1), (7, 1)]))
    write("subscribe_cursor", bytes([1, 0xFF]) + body("orders", "created", "", []))

    # connect: unary POST (JSON, protobuf), GET queries, stream envelopes (plain, compressed,
    # malformed), JSON bodies the typed codec hands back to the descriptors
    def envelope(flags, message):
        return bytes([flags]) + struct.pack(">I", len(message)) + message
    def request(head, body=b""):
        return head.encode() + b"\n\n" + body
    svc = "/iggy.gateway.v1."
    cj = "content-type: application/json\nconnect-protocol-version: 1"
    cp = "content-type: application/proto\nconnect-protocol-version: 1"
    sep = b"\n====\n"
    write("connect", sep.join([
        request(f"POST {svc}StreamService/CreateStream\n{cj}", b'{"name":"orders"}'),
        request(f"POST {svc}TopicService/CreateTopic\n{cj}", b'{"stream":"orders","name":"created","partitions_count":2}'),
        request(f"POST {svc}MessageService/SendMessages\n{cj}", b'{"stream":"orders","topic":"created","partition_id":0,"messages":[{"text":"a"},{"payload":"aGk=","headers":{"k":{"string_value":"v"}}}]}'),
        request(f"POST {svc}MessageService/PollMessages\n{cj}", b'{"stream":"orders","topic":"created","partition_id":0,"strategy":"POLLING_STRATEGY_FIRST","count":10}'),
    ]))
    write("connect", sep.join([
        request(f"POST {svc}StreamService/CreateStream\n{cp}", f_bytes(1, b"orders")),
        request(f"POST {svc}StreamService/GetStream\n{cp}", f_bytes(1, b"orders")),
        request(f"POST {svc}StreamService/ListStreams\n{cp}"),
    ]))
    write("connect", sep.join([
        request(f"GET {svc}StreamService/ListStreams?connect=v1&encoding=json&message=%7B%7D"),
        request(f"GET {svc}StreamService/GetStream?connect=v1&encoding=json&base64=1&message=eyJzdHJlYW0iOiJvcmRlcnMifQ"),
        request(f"GET {svc}StreamService/GetStream?connect=v1&encoding=proto&base64=1&message=CgZvcmRlcnM=&compression=identity"),
    ]))
    write("connect", sep.join([
        request(f"POST {svc}StreamService/CreateStream\n{cj}", b'{"name":5}'),
        request(f"POST {svc}TopicService/CreateTopic\n{cj}", b'{"stream":"s","name":"t","partitions_count":99999999999}'),
        request(f"POST {svc}MessageService/SendMessages\n{cj}", b'{"stream":"s","topic":"t","messages":[{"payload":"!!"}]}'),
        request(f"POST {svc}StreamService/CreateStream\n{cj}", b'{"name":"a","name":"b"}'),
    ]))
    subscribe = f"POST {svc}MessageService/Subscribe\ncontent-type: application/connect+"
    write("connect", sep.join([
        request(f"POST {svc}StreamService/CreateStream\n{cj}", b'{"name":"orders"}'),
        request(f"POST {svc}TopicService/CreateTopic\n{cj}", b'{"stream":"orders","name":"created","partitions_count":1}'),
        request(f"{subscribe}json\nconnect-timeout-ms: 30\nconnect-accept-encoding: gzip",
                envelope(0, b'{"stream":"orders","topic":"created","strategy":"POLLING_STRATEGY_FIRST"}')),
        request(f"{subscribe}json\nconnect-content-encoding: gzip\nconnect-timeout-ms: 30",
                envelope(1, gzip.compress(b'{"stream":"orders","topic":"created","cursor":"x"}', mtime=0))),
    ]))
    write("connect", request(f"{subscribe}proto\nconnect-timeout-ms: 20",
                             envelope(0, f_bytes(1, b"orders") + f_bytes(2, b"created"))))
    write("connect", sep.join([
        request(f"{subscribe}json", envelope(2, b"{}")),
        request(f"{subscribe}json", envelope(0, b"{}") + envelope(0, b"{}")),
        request(f"{subscribe}json", b"\x00\x00\x00"),
    ]))


if __name__ == "__main__":
    main()
