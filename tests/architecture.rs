//! The tree is the architecture, and stays so:
//! - no two modules of `src/` reach each other through `crate::` paths (tests
//!   excluded), so each can be read, tested and replaced on its own;
//! - every module lives in a folder named for its part, and the folder's root file
//!   only names its modules;
//! - ARCHITECTURE.md names every module, so the page and the tree agree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level files that are not in a folder, by design.
const TOP_LEVEL: &[&str] = &["lib", "main", "config"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The parts (folders of `src/`), each with the modules in it.
fn parts() -> BTreeMap<String, Vec<String>> {
    let mut parts = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let part = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut modules: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        modules.sort();
        parts.insert(part, modules);
    }
    parts
}

/// The code of a file without its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("#[cfg(test)]").next().unwrap_or_default().to_owned()
}

fn ident(rest: &str) -> String {
    rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect()
}

/// The modules a file names through `crate::part::module` paths, including
/// `crate::part::{a, b::C}` groups.
fn uses(code: &str, parts: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for rest in code.split("crate::").skip(1) {
        let first = ident(rest);
        if !parts.contains_key(&first) {
            if !first.is_empty() {
                used.insert(first);
            }
            continue;
        }
        let after = &rest[first.len()..];
        let Some(after) = after.strip_prefix("::") else { continue };
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() && name != "self" {
                    used.insert(format!("{first}::{name}"));
                }
            }
        } else {
            used.insert(format!("{first}::{}", ident(after)));
        }
    }
    used
}

/// Every module, as `part::module` (or its top-level name), with the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let parts = parts();
    let mut graph = BTreeMap::new();
    for (part, modules) in &parts {
        for module in modules {
            let name = format!("{part}::{module}");
            let mut used = uses(&code(&src().join(part).join(format!("{module}.rs"))), &parts);
            used.remove(&name);
            graph.insert(name, used);
        }
    }
    // `config` is the one top-level module the others use.
    graph.insert("config".to_owned(), uses(&code(&src().join("config.rs")), &parts));
    graph
}

#[test]
fn no_two_modules_import_each_other_in_a_loop() {
    let graph = graph();
    // A module is in a loop if it can reach itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph[start].iter().collect();
        while let Some(next) = stack.pop() {
            assert_ne!(next, start, "`{start}` reaches itself through `crate::` imports: {graph:?}");
            if seen.insert(next.clone()) {
                stack.extend(graph.get(next).into_iter().flatten());
            }
        }
    }
    assert!(graph.len() > 30, "the modules of src/ were found");
    // Every path names a module that exists: the walk above saw real edges.
    for (module, used) in &graph {
        for target in used {
            assert!(graph.contains_key(target), "`{module}` uses `crate::{target}`, which is not a module");
        }
    }
}

#[test]
fn every_module_is_in_a_part_whose_root_file_only_names_its_modules() {
    let parts = parts();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            TOP_LEVEL.contains(&stem.as_str()) || parts.contains_key(&stem),
            "src/{stem}.rs belongs in one of the folders {:?}",
            parts.keys().collect::<Vec<_>>()
        );
    }
    for (part, modules) in &parts {
        let root = std::fs::read_to_string(src().join(format!("{part}.rs"))).unwrap();
        let declared: Vec<String> = root
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
            .map(|l| {
                let name = l.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';'));
                name.unwrap_or_else(|| panic!("src/{part}.rs holds `{l}`: a part's root only names its modules"))
                    .to_owned()
            })
            .collect();
        assert_eq!(&declared, modules, "src/{part}.rs names exactly the files of src/{part}/");
    }
}

#[test]
fn architecture_md_names_every_part_and_module() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    for (part, modules) in parts() {
        assert!(page.contains(&format!("`{part}/`")), "ARCHITECTURE.md does not name the part `{part}/`");
        for module in modules {
            assert!(
                page.contains(&format!("`{module}`")) || page.contains(&format!("`{part}::{module}`")),
                "ARCHITECTURE.md does not name `{part}::{module}`"
            );
        }
    }
}
