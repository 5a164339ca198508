//! Repository rules, checked as ordinary tests (after rust-analyzer's `tidy.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use modelcast_tests::root;
use serde_json::Value;

/// `cargo metadata`: package id → (name, normal dependency ids).
fn dependency_graph() -> (BTreeMap<String, String>, BTreeMap<String, Vec<String>>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only this platform's dependencies: chrono's clock, say, pulls a wasm-only chain elsewhere.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().expect("rustc -vV runs");
    let version = String::from_utf8(version.stdout).unwrap();
    let host =
        version.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host");
    // Not --offline: metadata needs every platform's packages, which a build on this host never
    // downloads (on a fresh machine this would fail).
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", host])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
        .collect();
    let deps = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let normal = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().unwrap().to_owned())
                .collect();
            (n["id"].as_str().unwrap().to_owned(), normal)
        })
        .collect();
    (names, deps)
}

/// The names of every package `name` depends on (normal dependencies, transitively).
fn closure(name: &str) -> BTreeSet<String> {
    let (names, deps) = dependency_graph();
    let start = names.iter().find(|(_, n)| *n == name).map(|(id, _)| id.clone()).expect(name);
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for dep in &deps[&id] {
            if seen.insert(names[dep].clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

fn workspace_deps(name: &str) -> BTreeSet<String> {
    closure(name).into_iter().filter(|n| n.starts_with("modelcast-")).collect()
}

#[test]
fn protocol_is_pure_data() {
    let deps = closure("modelcast-protocol");
    for forbidden in ["tokio", "mio", "futures-util", "tungstenite", "hyper"] {
        assert!(!deps.contains(forbidden), "modelcast-protocol must not depend on {forbidden}");
    }
    assert!(
        workspace_deps("modelcast-protocol").is_empty(),
        "protocol depends on no workspace crate"
    );
}

#[test]
fn dependencies_point_one_way() {
    let hub = workspace_deps("modelcast-hub");
    assert!(
        !hub.contains("modelcast-notifiers") && !hub.contains("modelcast-server"),
        "hub: {hub:?}"
    );
    assert!(!workspace_deps("modelcast-notifiers").contains("modelcast-server"));
    // The Redis engine is a library beside the notifiers: the hub's engine seam and nothing of
    // the domain or the server; only the server wires it in.
    assert_eq!(
        workspace_deps("modelcast-redis"),
        BTreeSet::from(["modelcast-hub".to_owned(), "modelcast-protocol".to_owned()]),
        "redis depends on the hub (and its protocol) only"
    );
    for name in ["modelcast-protocol", "modelcast-hub", "modelcast-notifiers", "modelcast-client"] {
        assert!(
            !workspace_deps(name).contains("modelcast-redis"),
            "{name} must not depend on redis"
        );
    }
    // Push is told of messages by the server (the hub's tap); it knows devices and services,
    // not the hub, the engine or the domain.
    assert!(workspace_deps("modelcast-push").is_empty(), "push depends on no workspace crate");
    // The WebSocket frame layer knows frames, not modelcast: no workspace crate, no HTTP, and
    // no other WebSocket library.
    assert!(workspace_deps("modelcast-ws").is_empty(), "ws depends on no workspace crate");
    let ws = closure("modelcast-ws");
    for forbidden in ["hyper", "tungstenite", "tokio-tungstenite"] {
        assert!(!ws.contains(forbidden), "modelcast-ws must not depend on {forbidden}");
    }
    // The server's sessions are framed by modelcast-ws alone (tests and the Rust client may use
    // tungstenite as a client).
    assert!(!closure("modelcast-server").contains("tungstenite"), "the server frames itself");
    let client = workspace_deps("modelcast-client");
    assert_eq!(
        client,
        BTreeSet::from(["modelcast-protocol".to_owned()]),
        "client depends on protocol only"
    );
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        visit(&root().join(dir), &mut |path| {
            let text = std::fs::read_to_string(path).unwrap();
            if !text.starts_with("//!") {
                missing.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        });
    }
    assert!(missing.is_empty(), "these files must start with a `//!` doc comment: {missing:#?}");
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && name != "fixtures" && !name.starts_with('.') {
                visit(&path, f);
            }
        } else if name.ends_with(".rs") {
            f(&path);
        }
    }
}

/// The modules of one crate's `src/` that each module imports: `crate::module` paths, and
/// names imported through the crate root resolved to the module that defines them.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs")
            && module != "lib"
            && module != "main"
        {
            // Code only: a doc link to another module is not an import.
            let text = std::fs::read_to_string(&path).unwrap();
            let code: Vec<&str> =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            files.insert(module.to_owned(), code.join("\n"));
        }
    }
    // Which module defines each top-level public name.
    let mut defined_in: BTreeMap<String, String> = BTreeMap::new();
    for (module, text) in &files {
        for line in text.lines() {
            let words: Vec<&str> = line.split(|c: char| !c.is_alphanumeric() && c != '_').collect();
            if let ["pub", kind, name, ..] = words.as_slice()
                && ["struct", "enum", "type", "trait", "fn", "const"].contains(kind)
            {
                defined_in.insert((*name).to_owned(), module.clone());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (module, text) in &files {
        let mut deps = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            // `crate::{A, b::C}` or `crate::name`: every identifier up to the end of the path.
            let end = if rest.starts_with('{') {
                rest.find('}').map_or(rest.len(), |e| e + 1)
            } else {
                rest.find(|c: char| !c.is_alphanumeric() && c != '_' && c != ':')
                    .unwrap_or(rest.len())
            };
            let first_words = rest[..end]
                .split(['{', ',', '}'])
                .map(|p| p.trim().split("::").next().unwrap_or("").trim())
                .filter(|w| !w.is_empty());
            for word in first_words {
                let target = if files.contains_key(word) {
                    Some(word.to_owned())
                } else {
                    defined_in.get(word).cloned()
                };
                if let Some(target) = target.filter(|t| t != module) {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn dfs(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = dfs(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| dfs(node, graph, &mut Vec::new(), &mut done))
}

/// Inside each library crate, modules import one way: shared types live in leaf modules that
/// both sides import (no circles of files), so each file can be read knowing only
/// what it imports.
#[test]
fn modules_import_one_way() {
    for krate in ["protocol", "hub", "notifiers", "server", "client"] {
        let graph = module_graph(&root().join("crates").join(krate).join("src"));
        assert!(
            find_cycle(&graph).is_none(),
            "crates/{krate}: modules import each other in a circle: {:?}\n(graph: {graph:#?})",
            find_cycle(&graph)
        );
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}

/// The longest a function in `crates/server` may be: a handler reads as a list of steps
/// (`?` on each), so anything longer is several concerns in one place.
const MAX_FUNCTION_LINES: usize = 60;

/// Functions made of one declarative table (a JSON document of figures and their help, the
/// metrics' registrations, a summary of settings), as `file:function`, exempt from
/// [`MAX_FUNCTION_LINES`]: length there is content, not logic.
const DECLARATIVE: &[&str] = &["inspect.rs:figures", "metrics.rs:new", "security.rs:check_config"];

/// The functions of a Rust file and their length in lines: a `fn` at any indentation, up to
/// the line that closes it at the same indentation. (Rustfmt's layout makes this exact.)
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let signature = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) async fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p));
        let Some(rest) = signature else { continue };
        let name = rest.split(['(', '<']).next().unwrap_or_default().to_owned();
        let close = " ".repeat(indent) + "}";
        let end = lines[i..].iter().position(|l| *l == close || l.trim_end() == close);
        // A declaration without a body (a trait item) ends with `;` before any brace.
        if let Some(end) = end.filter(|_| !line.trim_end().ends_with(';')) {
            out.push((name, i + 1, end + 1));
        }
    }
    out
}

#[test]
fn no_function_in_the_server_is_longer_than_sixty_lines() {
    let dir = root().join("crates/server/src");
    let mut long = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests are data, not handlers.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (name, line, len) in function_lengths(code) {
            if len > MAX_FUNCTION_LINES && !DECLARATIVE.contains(&format!("{file}:{name}").as_str())
            {
                long.push(format!("{file}:{line} {name}: {len} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these into steps (at most {MAX_FUNCTION_LINES} lines):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_length_check_measures_functions() {
    let text = "fn a() {\n    let x = 1;\n}\n\n    pub(crate) fn b(\n        y: u8,\n    ) {\n        if y > 0 {\n        }\n    }\n";
    let lengths = function_lengths(text);
    assert_eq!(lengths, [("a".to_owned(), 1, 3), ("b".to_owned(), 5, 6)]);
}

/// The documents whose code references must hold: the codemap and the docs by reader.
fn documents() -> Vec<std::path::PathBuf> {
    let mut docs = vec![root().join("ARCHITECTURE.md"), root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs
}

/// Every source file of the repository (its path from the root), for finding what a document
/// names.
fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", "node_modules", ".git", "dist", ".venv"].contains(&name.as_str()) {
                    walk(&path, out);
                }
            } else {
                let rel = path.strip_prefix(root()).unwrap().display().to_string();
                let code = [".rs", ".ts", ".py"].iter().any(|ext| name.ends_with(ext));
                let text = if code {
                    std::fs::read_to_string(&path).unwrap_or_default()
                } else {
                    String::new()
                };
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    for dir in ["crates", "clients", "tests", "xtask", "deploy", "docs", "schemas"] {
        walk(&root().join(dir), &mut out);
    }
    out
}

/// What a document names in backticks that is not there: a file (`session.rs`,
/// `deploy/nginx/modelcast.conf`) that exists nowhere, or a code path (`actions::handle_frame`,
/// `Topics::publish_run`) whose item no file defines where the path says.
fn missing_references(text: &str, files: &[(String, String)]) -> Vec<String> {
    let mut missing = Vec::new();
    for token in text.split('`').skip(1).step_by(2) {
        let token = token.trim_end_matches("()");
        let is_file = [".rs", ".ts", ".mjs", ".py", ".toml", ".conf", ".env", ".service", ".html"]
            .iter()
            .any(|ext| token.ends_with(ext));
        if is_file && !token.contains(' ') && !token.contains('*') && !token.starts_with('.') {
            let exists = root().join(token).exists()
                || files.iter().any(|(path, _)| path.ends_with(&format!("/{token}")))
                || ["deploy", "tests", "clients/typescript", "clients/python"]
                    .iter()
                    .any(|dir| root().join(dir).join(token).exists());
            if !exists {
                missing.push(format!("file `{token}`"));
            }
            continue;
        }
        let parts: Vec<&str> = token.split("::").collect();
        let [owner, item] = parts.as_slice() else { continue };
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain(owner) || !plain(item) || owner.starts_with(char::is_numeric) {
            continue;
        }
        // `module::item` (a file stem) or `Type::item` (a type defined in the file).
        let owners: Vec<&(String, String)> = files
            .iter()
            .filter(|(path, text)| {
                path.ends_with(&format!("/{owner}.rs"))
                    || [
                        format!("struct {owner}"),
                        format!("enum {owner}"),
                        format!("trait {owner}"),
                    ]
                    .iter()
                    .any(|def| {
                        text.contains(&format!("{def} "))
                            || text.contains(&format!("{def}<"))
                            || text.contains(&format!("{def}("))
                            || text.contains(&format!("{def};"))
                    })
            })
            .collect();
        if owners.is_empty() {
            // A type or module of another crate (`serde_json::Value`): not ours to check.
            continue;
        }
        // `item` right after one of the ways Rust defines a name, as a whole word.
        let defines = |text: &str| {
            let ways = ["fn ", "struct ", "enum ", "trait ", "type ", "const ", "mod ", "static "];
            let fields = ["pub ", "pub(crate) ", "    "];
            ways.iter().chain(&fields).any(|way| {
                text.match_indices(&format!("{way}{item}")).any(|(at, found)| {
                    let next = text[at + found.len()..].chars().next().unwrap_or(' ');
                    let field = fields.contains(way);
                    !(next.is_alphanumeric() || next == '_')
                        && (!field || matches!(next, ':' | ',' | '(' | ' ' | '{'))
                })
            })
        };
        if !owners.iter().any(|(_, text)| defines(text)) {
            missing.push(format!("`{owner}::{item}`"));
        }
    }
    missing
}

/// Every file and code path the codemap and the docs name exists, so a newcomer following
/// them never reaches a name that went away.
#[test]
fn the_docs_name_only_what_exists() {
    let files = source_files();
    let mut problems = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for missing in missing_references(&text, &files) {
            problems.push(format!("{}: {missing}", doc.strip_prefix(root()).unwrap().display()));
        }
    }
    assert!(problems.is_empty(), "named but not there:\n{}", problems.join("\n"));
}

#[test]
fn the_reference_check_finds_what_went_away() {
    let files = source_files();
    let text = "`actions::handle_text`, `Topics::publish_run`, `Topics::publish`, \
                `tests/nope.rs`, `session.rs`, `serde_json::Value`, `HubStats::keys`";
    let missing = missing_references(text, &files);
    assert_eq!(missing, ["`actions::handle_text`", "`Topics::publish`", "file `tests/nope.rs`"]);
}
