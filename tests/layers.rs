//! The dependency rule of ARCHITECTURE.md, checked: every module of `src/` names only modules
//! on a lower layer (`use crate::x`, `crate::x::...` paths and doc links alike), so imports
//! run one way and no two modules import each other.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules of `src/`, bottom layer first. A module may name modules of a lower
/// layer only; modules on one layer know nothing of each other.
const LAYERS: &[&[&str]] = &[
    // leaf vocabulary
    &["section", "clock", "metrics"],
    // TLS termination: certificates, handshakes, what a client certificate says
    &["tls"],
    // admission and connection pieces with no routing knowledge
    &["client_ip", "limit", "conn", "logging", "access_log"],
    // domain modules
    &["upstream"],
    &["plugin"],
    &["route"],
    // the game-session listener: its own codec, sessions and links over the upstream layer
    &["game"],
    &["snapshot"],
    // the loader and assembly
    &["config"],
    &["runtime"],
    &["proxy", "admin"],
    &["server"],
    &["cli"],
    &["fuzz"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `crate::name` occurrences in a file, comments included: a doc link is a dependency too.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().next_back();
        // Part of a longer name, or `$crate::` in a macro: not a path this file names.
        if matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b};`: the first name of each item of the group.
            for item in split_top_level(group) {
                let name = ident(item.trim_start());
                if !name.is_empty() && name != "self" {
                    found.insert(name);
                }
            }
            continue;
        }
        let name = ident(rest);
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The items of a `{...}` group (given without its `{`), split at its top-level commas.
fn split_top_level(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_name_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a file name");
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer_of(module) else {
            wrong.push(format!("src/{module}: not in LAYERS; give it a layer"));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for named in named_modules(&text) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!(
                    "{} names crate::{named}, which is not below {module}",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}: crate::{named} is not in LAYERS",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_and_skips_macro_crates() {
    let text = "use crate::upstream::Call;\nuse crate::{clock::now_ms, section::{At, Dur}};\n/// [`crate::route::Route`]\nlet x = $crate::plugin::y;";
    let found: Vec<_> = named_modules(text).into_iter().collect();
    assert_eq!(found, ["clock", "route", "section", "upstream"]);
}
