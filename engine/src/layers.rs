//! The layer check: no module imports one of a higher layer, by the table
//! in the crate's documentation (lib.rs, "Layers"). Imports through
//! `super::` count like any other, so a child reaching into its parent is
//! checked too; test modules (`#[cfg(test)] mod ...` to the end of a file)
//! may use anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Module path prefix -> layer (0 is the lowest), read from lib.rs's table.
fn layer_table(lib_rs: &str) -> Vec<(Vec<String>, usize)> {
    let rows: Vec<&str> = lib_rs
        .lines()
        .skip_while(|l| !l.starts_with("//! # Layers"))
        .skip_while(|l| !l.starts_with("//! |--"))
        .skip(1)
        .take_while(|l| l.starts_with("//! |"))
        .collect();
    assert!(rows.len() > 5, "lib.rs has its layer table");
    let mut table = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let layer = rows.len() - 1 - i;
        let modules = row.split('|').nth(2).expect("a row has a modules column");
        for name in modules.split('`').skip(1).step_by(2) {
            let name = name.trim_start_matches("mod@");
            table.push((name.split("::").map(String::from).collect(), layer));
        }
    }
    table
}

/// The layer of module path `path`: its longest listed prefix; items of
/// the crate root and unlisted modules are the lowest layer's.
fn layer_of(table: &[(Vec<String>, usize)], path: &[String]) -> usize {
    table
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(0, |(_, layer)| *layer)
}

/// A file's module path: `store/catalog.rs` -> `store::catalog`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code that counts: comments dropped, test modules cut off.
fn code_of(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines[i + 1..].iter().find(|l| !l.trim().is_empty());
        if line.trim() == "#[cfg(test)]" && next.is_some_and(|n| n.trim_start().starts_with("mod ")) {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Every path a `use` tree names, braces expanded: `a::{b, c::d}` ->
/// `a::b`, `a::c::d`.
fn expand_use(tree: &str) -> Vec<String> {
    // `d as e` names `d`: drop each `as` and its new name, then the spaces.
    let mut tokens = tree.split_whitespace();
    let mut tree = String::new();
    while let Some(t) = tokens.next() {
        match t {
            "as" => {
                let renamed = tokens.next().unwrap_or("");
                tree.push_str(renamed.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            }
            t => tree.push_str(t),
        }
    }
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(
                    expand_use(&inner[start..i])
                        .into_iter()
                        .map(|p| format!("{prefix}{p}")),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        out.extend(
            expand_use(&inner[start..])
                .into_iter()
                .map(|p| format!("{prefix}{p}")),
        );
    }
    out
}

/// The module path an import names, from the module `from`; None for
/// paths outside the crate or inside `from` itself.
fn resolve(from: &[String], path: &str) -> Option<Vec<String>> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let mut base: Vec<String> = match segs.next()? {
        "crate" => Vec::new(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    for s in segs {
        match s {
            "super" => {
                base.pop();
            }
            "self" | "*" => {}
            s => base.push(s.to_string()),
        }
    }
    Some(base)
}

/// Every import of every file below `src`: (file, line, importer, imported).
fn imports(src: &Path) -> Vec<(PathBuf, usize, Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("below src").to_path_buf();
        let from = module_of(&rel);
        let text = std::fs::read_to_string(&file).expect("source file reads");
        let code = code_of(&text);
        let mut in_use: Option<(usize, String)> = None;
        for (n, line) in &code {
            let trimmed = line.trim_start();
            let starts_use = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| trimmed.strip_prefix(p));
            if let Some(rest) = starts_use {
                in_use = Some((*n, String::new()));
                in_use.as_mut().expect("just set").1.push_str(rest);
            } else if let Some((_, tree)) = in_use.as_mut() {
                tree.push_str(line);
            } else {
                // Paths written inline: `crate::store::io_err(..)`.
                for (at, _) in line.match_indices("crate::").chain(line.match_indices("super::")) {
                    let before = line[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let path: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    if let Some(to) = resolve(&from, &path) {
                        out.push((rel.clone(), *n, from.clone(), to));
                    }
                }
            }
            if let Some((start, tree)) = in_use.take_if(|(_, t)| t.contains(';')) {
                let tree = tree.split(';').next().unwrap_or("");
                for path in expand_use(tree) {
                    if let Some(to) = resolve(&from, &path) {
                        out.push((rel.clone(), start, from.clone(), to));
                    }
                }
            }
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source dir reads").flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let table = layer_table(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs reads"));
    let mut wrong = BTreeSet::new();
    for (file, line, from, to) in imports(&src) {
        let (a, b) = (layer_of(&table, &from), layer_of(&table, &to));
        if b > a {
            wrong.insert(format!(
                "{}:{line}: {} (layer {a}) imports {} (layer {b})",
                file.display(),
                from.join("::"),
                to.join("::")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer table in lib.rs:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_checker_reads_what_it_checks() {
    assert_eq!(
        expand_use("super::{a, b::{c, d as e}}"),
        ["super::a", "super::b::c", "super::b::d"]
    );
    let from = ["store".to_string(), "catalog".to_string()];
    assert_eq!(
        resolve(&from, "super::objects::X").unwrap(),
        ["store", "objects", "X"]
    );
    assert_eq!(resolve(&from, "crate::format::pack").unwrap(), ["format", "pack"]);
    assert!(resolve(&from, "std::fs").is_none());
    let table = layer_table("//! # Layers\n//! |a|b|c|\n//! |--|--|--|\n//! | top | [`x`] | |\n//! | 2 | `y` | |\n//! | 3 | `z` | |\n//! | 4 | `w` | |\n//! | 5 | `v` | |\n//! | bottom | `u::k` | |\n");
    assert_eq!(layer_of(&table, &["x".into(), "q".into()]), 5);
    assert_eq!(layer_of(&table, &["u".into(), "k".into()]), 0);
    assert_eq!(layer_of(&table, &["root_item".into()]), 0);
}
