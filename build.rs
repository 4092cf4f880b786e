//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed), generates the
//! tonic servers and clients, and writes the encoded descriptor set that server reflection and
//! the REST transcoder read at run time. Everything goes to `OUT_DIR`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "iggy/gateway/v1/stream.proto",
    "iggy/gateway/v1/topic.proto",
    "iggy/gateway/v1/message.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));

    let descriptors = match protox::compile(PROTOS, ["proto"]) {
        Ok(descriptors) => descriptors,
        Err(err) => {
            // protox's error names the file, line and column; make it readable in cargo's output.
            eprintln!("failed to compile the protobuf API in proto/: {err:?}");
            std::process::exit(1);
        }
    };

    let encoded = prost::Message::encode_to_vec(&descriptors);
    let descriptor_path = out_dir.join("iggy_gateway_descriptor.bin");
    if let Err(err) = std::fs::write(&descriptor_path, encoded) {
        eprintln!("failed to write {}: {err}", descriptor_path.display());
        std::process::exit(1);
    }

    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payloads are `Bytes` end to end so a message body is never copied on the way to the broker.
        .bytes(".iggy.gateway.v1")
        .compile_fds(descriptors)
    {
        eprintln!("failed to generate Rust code from proto/: {err}");
        std::process::exit(1);
    }
}
