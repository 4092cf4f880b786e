//! The import rule of ARCHITECTURE.md, checked: every `crate::` import in `src/` points down
//! the request path. Each top-level module has a floor; a module may import only modules on
//! lower floors, so no circle can form between them. Modules on one floor (`grpc` and `rest`)
//! may not import each other. A new top-level module fails here until it is given a floor.
//! `proto` (generated, declared in lib.rs) imports `codec` and `descriptors`, both below it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Floors, from the top of the request path down.
const FLOORS: &[(&str, u32)] = &[
    ("main", 15),
    ("startup", 14),
    ("telemetry", 13),
    ("config", 12),
    ("listener", 11),
    ("ops", 10),
    ("layers", 9),
    ("connect", 9),
    ("grpc", 8),
    ("rest", 8),
    ("proto", 7),
    ("subscription", 7),
    ("idempotency", 7),
    ("stats", 7),
    ("codec", 6),
    ("answer", 5),
    ("broker", 4),
    ("identity", 4),
    ("metrics", 3),
    ("budget", 2),
    ("extensions", 2),
    ("descriptors", 1),
    // Unit tests' helpers: imports nothing of the crate.
    ("testing", 0),
];

/// The top-level module a file under `src/` belongs to.
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix("src").unwrap_or(path);
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules a file names through `crate::`, in paths and in `use crate::{..}`
/// groups; comments (doc links included) do not count.
fn imports(source: &str) -> BTreeSet<String> {
    let source: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let source = source.as_str();
    let mut found = BTreeSet::new();
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_in_src_points_down_the_request_path() {
    let floors: BTreeMap<&str, u32> = FLOORS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    assert!(
        files.len() > 20,
        "src/ read from {:?}",
        std::env::current_dir()
    );
    let mut violations = Vec::new();
    for file in &files {
        let from = module_of(file);
        // lib.rs only declares the modules; unit tests may build fixtures from any module.
        if from == "lib" || file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let Some(&floor) = floors.get(from.as_str()) else {
            violations.push(format!("{}: module `{from}` has no floor", file.display()));
            continue;
        };
        let source = fs::read_to_string(file).expect("readable source");
        for to in imports(&source) {
            if to == from {
                continue;
            }
            match floors.get(to.as_str()) {
                Some(&target) if target < floor => {}
                Some(&target) => violations.push(format!(
                    "{}: `{from}` (floor {floor}) imports `{to}` (floor {target})",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: imports `crate::{to}`, which has no floor",
                    file.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_import_reader_sees_paths_and_groups() {
    let source = "//! Read by `crate::telemetry`.\nuse crate::{\n    answer::{Problem, x},\n    \
                  broker::Broker,\n    proto,\n};\nfn f() { crate::metrics::Metrics::default(); }";
    let found: Vec<String> = imports(source).into_iter().collect();
    assert_eq!(found, ["answer", "broker", "metrics", "proto"]);
}
