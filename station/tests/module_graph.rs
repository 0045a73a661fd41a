//! The station's modules form a graph without cycles: no module imports a
//! module that (directly or through others) imports it. Read from the
//! source, so a new `use crate::…` that closes a loop fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module name → the top-level modules its non-test code names
/// as `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may reach anywhere; the code above them may not.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(crate_names(&code).into_iter().filter(|n| *n != top));
    }
    graph
}

/// The top-level module names `code` reaches as `crate::name`, grouped
/// imports (`crate::{a, b::c}`) included; types (capitalised) left out.
fn crate_names(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |name: String| {
        if !name.is_empty() && name.chars().all(|c| !c.is_uppercase()) {
            out.insert(name);
        }
    };
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        let Some(group) = rest.strip_prefix('{') else {
            add(ident(rest));
            continue;
        };
        let (mut depth, mut start) = (0, true);
        for (j, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => start = true,
                c if start && !c.is_whitespace() => {
                    add(ident(&group[j..]));
                    start = false;
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_reader_sees_plain_and_grouped_imports() {
    let names = crate_names("use crate::api::X;\nuse crate::{state, keys::StationKey, storage::{a, b}};\nlet _ = crate::Error;");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["api", "keys", "state", "storage"]
    );
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = graph();
    assert!(graph.contains_key("api") && graph.contains_key("dashboard"));
    assert!(
        graph["api"].contains("state"),
        "the reader missed an import"
    );
    // A grouped import is read too.
    assert!(graph["state"].contains("sessions"), "{:?}", graph["state"]);
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}
