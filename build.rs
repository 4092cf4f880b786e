//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed), generates the
//! tonic servers and clients, and writes the encoded descriptor sets (with the comments, and
//! without them) that server reflection and the REST transcoder read at run time, and the
//! request checks of the protos' `buf.validate` rules (`build/rules.rs`). Everything goes to
//! `OUT_DIR`.

use std::{env, path::PathBuf};

#[path = "build/rules.rs"]
mod rules;

const PROTOS: &[&str] = &[
    "iggy/gateway/v1/stream.proto",
    "iggy/gateway/v1/topic.proto",
    "iggy/gateway/v1/message.proto",
    "iggy/gateway/v1/event.proto",
    "iggy/gateway/v1/http_options.proto",
    "iggy/gateway/v1/stats.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));

    let compile = |source_info: bool| {
        let compiler = protox::Compiler::new(["proto"]).and_then(|mut compiler| {
            compiler
                .include_source_info(source_info)
                .include_imports(true);
            compiler.open_files(PROTOS)?;
            Ok(compiler)
        });
        match compiler {
            Ok(compiler) => compiler,
            Err(err) => {
                // protox's error names the file, line and column; make it readable in cargo's output.
                eprintln!("failed to compile the protobuf API in proto/: {err:?}");
                std::process::exit(1);
            }
        }
    };
    let compiler = compile(true);
    // Encoded by protox itself, so custom options such as google.api.http survive (decoding
    // into prost_types would drop them).
    let encoded = compiler.encode_file_descriptor_set();
    let descriptors = compiler.file_descriptor_set();
    let checks = match rules::generate(&compiler.descriptor_pool()) {
        Ok(checks) => checks,
        Err(err) => {
            eprintln!("failed to generate the request checks from the buf.validate rules: {err}");
            std::process::exit(1);
        }
    };
    let checks_path = out_dir.join("iggy_gateway_validate.rs");
    if let Err(err) = std::fs::write(&checks_path, checks) {
        eprintln!("failed to write {}: {err}", checks_path.display());
        std::process::exit(1);
    }
    // The set without its comments (source info), for the pool the gateway keeps all its life:
    // decoded, the comments are half of it, and only reflection and OpenAPI show them.
    let lean = compile(false).encode_file_descriptor_set();
    for (name, set) in [
        ("iggy_gateway_descriptor.bin", &encoded),
        ("iggy_gateway_descriptor_lean.bin", &lean),
    ] {
        let path = out_dir.join(name);
        if let Err(err) = std::fs::write(&path, set) {
            eprintln!("failed to write {}: {err}", path.display());
            std::process::exit(1);
        }
    }

    // Type names let the bounded codec find each message's descriptor. The well-known types
    // come from pbjson-types (prost's own, with their proto3 JSON forms), so the API's typed
    // JSON codecs below can use them.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payloads are `Bytes` end to end so a message body is never copied on the way to the broker.
        .bytes(".iggy.gateway.v1")
        // Decoding is bounded before anything is allocated (src/codec.rs).
        .codec_path("crate::codec::BoundedCodec")
        .compile_fds_with_config(descriptors, config)
    {
        eprintln!("failed to generate Rust code from proto/: {err}");
        std::process::exit(1);
    }

    // The API's messages as proto3 JSON (serde), typed: what REST's direct calls parse and
    // write (`iggy.gateway.v1.serde.rs`). Written as REST writes JSON: proto field names, every
    // field (defaults too); either name is read.
    let typed_json = pbjson_build::Builder::new()
        .register_descriptors(&encoded)
        .and_then(|builder| {
            builder
                .out_dir(&out_dir)
                .preserve_proto_field_names()
                .emit_fields()
                .build(&[".iggy.gateway.v1"])
        });
    if let Err(err) = typed_json {
        eprintln!("failed to generate the JSON codecs from proto/: {err}");
        std::process::exit(1);
    }
    // `bytes` fields are read by `proto::base64`: pbjson's decoding, faster for the spelling
    // every encoder writes. Checked, so a pbjson that writes its codecs otherwise fails here.
    let codecs = out_dir.join("iggy.gateway.v1.serde.rs");
    let generated = std::fs::read_to_string(&codecs).unwrap_or_default();
    const PBJSON_BYTES: &str = "::pbjson::private::BytesDeserialize<_>";
    if !generated.contains(PBJSON_BYTES) {
        eprintln!("{}: no {PBJSON_BYTES} to replace", codecs.display());
        std::process::exit(1);
    }
    let replaced = generated.replace(PBJSON_BYTES, "crate::proto::base64::Base64<_>");
    // And written by it: the same text as pbjson's encoder, with SIMD, as JSON serde_json
    // need not escape. Every call must have the one shape replaced.
    const PBJSON_ENCODE: &str = "pbjson::private::base64::encode(&v).as_str()";
    let calls = replaced.matches("pbjson::private::base64::encode(").count();
    if calls == 0 || replaced.matches(PBJSON_ENCODE).count() != calls {
        eprintln!(
            "{}: pbjson's base64 encoder is not called only as {PBJSON_ENCODE}",
            codecs.display()
        );
        std::process::exit(1);
    }
    let replaced = replaced.replace(PBJSON_ENCODE, "&crate::proto::base64::Written(&v)");
    // An enum number no value has is written as the number, as the descriptors write it,
    // where pbjson refuses it.
    let replaced = match unknown_enums(replaced) {
        Ok(replaced) => replaced,
        Err(err) => {
            eprintln!("{}: {err}", codecs.display());
            std::process::exit(1);
        }
    };
    // Well-known types and doubles are written as the descriptors write them (`proto::wkt`).
    let replaced = match wkt_fields(&compiler.descriptor_pool(), replaced) {
        Ok(replaced) => replaced,
        Err(err) => {
            eprintln!("{}: {err}", codecs.display());
            std::process::exit(1);
        }
    };
    if let Err(err) = std::fs::write(&codecs, replaced) {
        eprintln!("{}: {err}", codecs.display());
        std::process::exit(1);
    }
}

/// Points every field of a well-known type that `proto::wkt` writes, and every `double`, at
/// its writer, in the generated `Serialize` of the message holding it. A field the generated code writes
/// otherwise (a list, a map) or a message nested in another fails the build, so no such field
/// is ever written by pbjson-types unnoticed.
fn wkt_fields(
    pool: &prost_reflect::DescriptorPool,
    mut generated: String,
) -> Result<String, String> {
    for message in pool.all_messages() {
        if message.package_name() != "iggy.gateway.v1" {
            continue;
        }
        for field in message.fields() {
            let kind = match field.kind() {
                prost_reflect::Kind::Double => {
                    point(&mut generated, &message, &field, "Double")?;
                    continue;
                }
                prost_reflect::Kind::Float => {
                    return Err(format!(
                        "{}: proto::wkt does not write float",
                        field.full_name()
                    ));
                }
                prost_reflect::Kind::Message(kind) => kind,
                _ => continue,
            };
            let writer = match kind.full_name() {
                "google.protobuf.Timestamp" => "Timestamp",
                "google.protobuf.Duration" => "Duration",
                "google.protobuf.Value" => "Value",
                name if name.starts_with("google.protobuf.") => {
                    return Err(format!(
                        "{}: proto::wkt does not write {name}",
                        field.full_name()
                    ));
                }
                _ => continue,
            };
            point(&mut generated, &message, &field, writer)?;
        }
    }
    Ok(generated)
}

/// Points `field`'s write in `message`'s generated `Serialize` at `proto::wkt::{writer}`: a
/// singular field of a top-level message, written once as an optional or oneof value (`v`)
/// or as itself (`&self.field`).
fn point(
    generated: &mut String,
    message: &prost_reflect::MessageDescriptor,
    field: &prost_reflect::FieldDescriptor,
    writer: &str,
) -> Result<(), String> {
    if field.is_list() || field.is_map() || message.parent_message().is_some() {
        return Err(format!(
            "{}: only a singular field of a top-level message is pointed at proto::wkt",
            field.full_name()
        ));
    }
    let start = format!("impl serde::Serialize for {} {{", message.name());
    let begin = generated
        .find(&start)
        .ok_or_else(|| format!("no `{start}` for {}", field.full_name()))?;
    let end = generated[begin + start.len()..]
        .find("\nimpl")
        .map_or(generated.len(), |at| begin + start.len() + at);
    let block = &generated[begin..end];
    let name = field.name();
    let write = |value: &str| format!("struct_ser.serialize_field(\"{name}\", {value})?;");
    let values = ["v".to_owned(), format!("&self.{name}")];
    let found: Vec<&String> = values
        .iter()
        .filter(|value| block.matches(&write(value)).count() == 1)
        .collect();
    let [value] = found[..] else {
        return Err(format!("no single write of {} to point", field.full_name()));
    };
    let pointed = block.replace(
        &write(value),
        &write(&format!("&crate::proto::wkt::{writer}({value})")),
    );
    generated.replace_range(begin..end, &pointed);
    Ok(())
}

/// Rewrites each `let v = E::try_from(self.f).map_err(|_| … "Invalid variant" …)?;` that
/// pbjson writes for an enum field into `proto::wkt::Enum` (the value's name, or the number).
fn unknown_enums(generated: String) -> Result<String, String> {
    const REFUSED: &str = ".map_err(|_| serde::ser::Error::custom(format!(\"Invalid variant {}\", ";
    let mut rewritten = String::with_capacity(generated.len());
    let mut found = 0;
    for line in generated.split_inclusive('\n') {
        let Some(at) = line.find(REFUSED) else {
            rewritten.push_str(line);
            continue;
        };
        let number = line[at + REFUSED.len()..]
            .trim_end()
            .strip_suffix(")))?;")
            .filter(|number| number.starts_with("self.") && line[..at].trim().is_empty())
            .ok_or_else(|| format!("an enum written otherwise: {}", line.trim()))?;
        rewritten.push_str(&line[..at]);
        rewritten.push_str(&format!(
            ".map_or(crate::proto::wkt::Enum::Unknown({number}), crate::proto::wkt::Enum::Known);\n"
        ));
        found += 1;
    }
    if found == 0 {
        return Err("no enum field written as pbjson writes it".into());
    }
    Ok(rewritten)
}
