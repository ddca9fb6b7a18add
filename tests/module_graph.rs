//! Module imports run one way: no two files in different modules of `src/` import each other,
//! directly or around a circle.
//!
//! The check reads every `src/**/*.rs` file, finds the module paths it names (`use crate::…`,
//! `crate::a::b::f()`, `super::…`, `self::…` and paths that start with a child module's name),
//! resolves each to the file that defines the longest matching module, and looks for cycles in
//! that file graph (strongly connected components). Test code is left out: a `#[cfg(test)]`
//! item (an inline `mod tests { … }`, a `mod tests;` file, a test-only `use`) may import
//! anything. `src/main.rs` is the binary and sees the library only as `sitegate::`.
//!
//! A cycle makes the failure list its files and one concrete circle of imports, so the fix is
//! to move the shared piece down a layer (see docs/architecture.md, "Layers"). The one circle
//! allowed is a module with its own submodules, inside one folder (see [`inside_one_folder`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Whether every file of a cycle lies inside one top-level folder of `src/` (`mqtt/mod.rs` with
/// `mqtt/session.rs`, `modbus/engine.rs` with `modbus/engine/link_task.rs`). Such a circle is a
/// module and its submodules using each other's items (`super::Type` in a child, the child's
/// items re-exported by the parent): one module's inside, which Rust's privacy already draws
/// around. A circle through two folders, or through a file at the top of `src/`, is a layering
/// error and fails.
fn inside_one_folder(scc: &BTreeSet<String>) -> bool {
    let folder = |f: &String| f.split_once('/').map(|(d, _)| d.to_string());
    let first = scc.iter().next().and_then(folder);
    first.is_some() && scc.iter().all(|f| folder(f) == first)
}

#[test]
fn module_imports_have_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = build_graph(&root).unwrap();
    assert!(
        graph.len() > 20,
        "the module graph of src/ has only {} files; the reader is broken",
        graph.len()
    );
    let mut report = Vec::new();
    for scc in cycles(&graph) {
        if !inside_one_folder(&scc) {
            let circle = one_circle(&graph, &scc);
            report.push(format!(
                "  files {{{}}}\n    e.g. {}",
                scc.iter().cloned().collect::<Vec<_>>().join(", "),
                circle.join(" -> ")
            ));
        }
    }
    assert!(
        report.is_empty(),
        "module imports run in a circle ({} cycle(s)):\n{}\n\
         move the shared piece down a layer so imports run one way (docs/architecture.md)",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn a_circle_inside_one_folder_is_a_module_and_its_children_and_any_other_is_not() {
    let set = |fs: &[&str]| {
        fs.iter()
            .map(|f| f.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert!(inside_one_folder(&set(&["mqtt/mod.rs", "mqtt/session.rs"])));
    assert!(inside_one_folder(&set(&[
        "modbus/engine.rs",
        "modbus/engine/link_task.rs"
    ])));
    assert!(!inside_one_folder(&set(&[
        "config/mod.rs",
        "grants/engine.rs"
    ])));
    assert!(!inside_one_folder(&set(&["cli/mod.rs", "app/mod.rs"])));
    assert!(!inside_one_folder(&set(&["business.rs", "api/ports.rs"])));
    assert!(!inside_one_folder(&set(&["metrics.rs", "audit.rs"])));
}

#[test]
fn cycle_finder_reports_a_three_file_circle_and_nothing_else() {
    let mut g: Graph = BTreeMap::new();
    let mut edge = |a: &str, b: &str| {
        g.entry(a.to_string()).or_default().insert(b.to_string());
        g.entry(b.to_string()).or_default();
    };
    edge("cli.rs", "app.rs");
    edge("app.rs", "adapters.rs");
    edge("adapters.rs", "cli.rs");
    edge("adapters.rs", "model.rs");
    edge("app.rs", "model.rs");
    edge("api/mod.rs", "model.rs");
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    let expected: BTreeSet<String> = ["adapters.rs", "app.rs", "cli.rs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found[0], expected);
    let circle = one_circle(&g, &found[0]);
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
}

#[test]
fn cycle_finder_accepts_a_layered_graph_and_reports_a_two_file_circle() {
    let mut g: Graph = BTreeMap::new();
    for (a, b) in [
        ("cli/mod.rs", "app/mod.rs"),
        ("app/mod.rs", "grants/mod.rs"),
    ] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    assert!(cycles(&g).is_empty());
    g.entry("grants/mod.rs".into())
        .or_default()
        .insert("grants/cli.rs".into());
    g.entry("grants/cli.rs".into())
        .or_default()
        .insert("grants/mod.rs".into());
    assert_eq!(cycles(&g).len(), 1);
}

#[test]
fn reader_resolves_crate_super_self_and_child_paths_and_skips_test_code() {
    let files: BTreeMap<String, Vec<String>> = [
        ("lib.rs", vec![]),
        ("a.rs", vec!["a"]),
        ("b/mod.rs", vec!["b"]),
        ("b/c.rs", vec!["b", "c"]),
        ("b/d.rs", vec!["b", "d"]),
        ("e.rs", vec!["e"]),
        ("f.rs", vec!["f"]),
    ]
    .into_iter()
    .map(|(f, m)| (f.to_string(), m.into_iter().map(String::from).collect()))
    .collect();
    let modules = module_index(&files);
    let src = r#"
        //! docs that say crate::e::x
        use crate::{a::Thing, b::{c::Other, self}};
        use super::d::More;
        mod inner;
        fn f() { let s = "crate::f::nope"; crate::e::call(); self::x(); }
        #[cfg(test)]
        mod tests { use crate::f::Helper; }
        #[cfg(test)]
        use crate::f::Also;
    "#;
    let deps = imports_of(src, &["b".to_string(), "c".to_string()], &modules);
    let got: BTreeSet<&str> = deps.iter().map(String::as_str).collect();
    assert_eq!(
        got,
        ["a.rs", "b/mod.rs", "b/c.rs", "b/d.rs", "e.rs"]
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// The reader: files → module paths → edges.

/// File (relative to `src/`, `/`-separated) → the files it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn build_graph(root: &Path) -> std::io::Result<Graph> {
    let mut paths = Vec::new();
    collect_rs(root, &mut paths)?;
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for p in paths {
        let rel = p
            .strip_prefix(root)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "main.rs" || rel.starts_with("bin/") {
            continue;
        }
        let text = std::fs::read_to_string(&p)?;
        files.insert(rel.clone(), module_path_of(&rel));
        sources.insert(rel, text);
    }
    let modules = module_index(&files);
    // Files declared as `#[cfg(test)] mod x;` (and everything under them) are test code.
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for (rel, text) in &sources {
        let clean = strip_comments_and_strings(text);
        for name in cfg_test_mod_decls(&clean) {
            let mut m = files[rel].clone();
            m.push(name);
            test_only.insert(m);
        }
    }
    let is_test = |m: &[String]| test_only.iter().any(|t| m.starts_with(t));
    let mut graph = Graph::new();
    for (rel, module) in &files {
        if is_test(module) {
            continue;
        }
        let deps = imports_of(&sources[rel], module, &modules);
        let deps = deps
            .into_iter()
            .filter(|d| d != rel && d != "lib.rs" && !is_test(&files[d]))
            .collect();
        graph.insert(rel.clone(), deps);
    }
    Ok(graph)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        entries.push(e?.path());
    }
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_rs(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `a/b.rs` → `[a, b]`; `a/mod.rs` → `[a]`; `lib.rs` → `[]`.
fn module_path_of(rel: &str) -> Vec<String> {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = stem.split('/').map(String::from).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// Module path → file.
fn module_index(files: &BTreeMap<String, Vec<String>>) -> BTreeMap<Vec<String>, String> {
    files.iter().map(|(f, m)| (m.clone(), f.clone())).collect()
}

/// The file defining the longest prefix of `path` that is a module with its own file.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, String>) -> Option<String> {
    (0..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]).cloned())
}

/// The files that `src` (the file of module `module`) imports, test code left out.
fn imports_of(
    src: &str,
    module: &[String],
    modules: &BTreeMap<Vec<String>, String>,
) -> BTreeSet<String> {
    let clean = strip_test_items(&strip_comments_and_strings(src));
    let toks = tokenize(&clean);
    let mut out = BTreeSet::new();
    let children: BTreeSet<&str> = modules
        .keys()
        .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        .map(|m| m[module.len()].as_str())
        .collect();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        let prev = if i > 0 { toks[i - 1].as_str() } else { "" };
        // A path start: not the tail of a longer path (`x::crate` is impossible, `a::super` is
        // not how Rust writes it) and not a field/method (`.c`).
        let starts_path = prev != "::" && prev != ".";
        let followed = toks.get(i + 1).is_some_and(|n| n == "::");
        if starts_path && followed {
            let base: Option<Vec<String>> = match t {
                "crate" => Some(Vec::new()),
                "self" => Some(module.to_vec()),
                "super" => {
                    let mut b = module.to_vec();
                    let mut j = i;
                    b.pop();
                    // `super::super::…`
                    while toks.get(j + 2).is_some_and(|s| s == "super")
                        && toks.get(j + 3).is_some_and(|s| s == "::")
                    {
                        b.pop();
                        j += 2;
                    }
                    i = j;
                    Some(b)
                }
                name if children.contains(name) => {
                    let mut b = module.to_vec();
                    b.push(name.to_string());
                    if let Some(f) = resolve(&b, modules) {
                        out.insert(f);
                    }
                    Some(b)
                }
                _ => None,
            };
            if let Some(base) = base {
                let mut leaves = Vec::new();
                let next = use_tree(&toks, i + 2, base, &mut leaves);
                for leaf in leaves {
                    if let Some(f) = resolve(&leaf, modules) {
                        out.insert(f);
                    }
                }
                i = next;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Reads a path or use tree starting at `toks[i]` (just after `prefix::`); pushes every full
/// path it names to `out`; returns the index after it.
fn use_tree(
    toks: &[String],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match toks.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, path.clone(), out),
                    }
                }
            }
            Some("self") => {
                out.push(path);
                return i + 1;
            }
            Some(seg) if is_ident(seg) => {
                path.push(seg.to_string());
                if toks.get(i + 1).is_some_and(|t| t == "::") {
                    i += 2;
                } else {
                    out.push(path);
                    return i + 1;
                }
            }
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokenize(s: &str) -> Vec<String> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            toks.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                toks.push(c.to_string());
            }
            i += 1;
        }
    }
    toks
}

/// Blanks out comments, string and char literals (keeping line structure), so that prose and
/// text never read as imports.
fn strip_comments_and_strings(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // Raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < b.len() {
                if b[j] == '"' {
                    let mut k = 0;
                    while k < hashes && b.get(j + 1 + k) == Some(&'#') {
                        k += 1;
                    }
                    if k == hashes {
                        j += 1 + hashes;
                        break 'raw;
                    }
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if b.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Names of `#[cfg(test)] mod name;` declarations.
fn cfg_test_mod_decls(clean: &str) -> Vec<String> {
    let toks = tokenize(clean);
    let mut out = Vec::new();
    for start in cfg_test_attrs(&toks) {
        let mut j = start;
        while toks
            .get(j)
            .is_some_and(|t| t == "pub" || t == "(" || t == "crate" || t == ")")
        {
            j += 1;
        }
        if toks.get(j).is_some_and(|t| t == "mod") && toks.get(j + 2).is_some_and(|t| t == ";") {
            out.push(toks[j + 1].clone());
        }
    }
    out
}

/// Token indices just after each `#[cfg(test)]` attribute.
fn cfg_test_attrs(toks: &[String]) -> Vec<usize> {
    let pat = ["#", "[", "cfg", "(", "test", ")", "]"];
    (0..toks.len())
        .filter(|&i| toks.len() >= i + pat.len() && pat.iter().zip(&toks[i..]).all(|(p, t)| p == t))
        .map(|i| i + pat.len())
        .collect()
}

/// Drops each item marked `#[cfg(test)]` (up to its `;` or its balanced `{ … }`), as text.
fn strip_test_items(clean: &str) -> String {
    let marker = "#[cfg(test)]";
    let squeezed: String = clean.to_string();
    let mut out = String::new();
    let mut rest = squeezed.as_str();
    while let Some(pos) = rest.find(marker) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + marker.len()..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// The cycle finder.

/// The strongly connected components with more than one file (Tarjan), each as a sorted set.
fn cycles(g: &Graph) -> Vec<BTreeSet<String>> {
    struct St<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// One concrete circle through a component: the shortest way from its first file back to
/// itself (breadth-first inside the component), as `a -> b -> … -> a`.
fn one_circle(g: &Graph, scc: &BTreeSet<String>) -> Vec<String> {
    let Some(start) = scc.iter().next() else {
        return Vec::new();
    };
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.as_str()]);
    while let Some(v) = queue.pop_front() {
        for w in g.get(v).into_iter().flatten() {
            if !scc.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.clone()];
                let mut cur = v;
                while cur != start {
                    path.push(cur.to_string());
                    cur = prev[cur];
                }
                path.push(start.clone());
                path.reverse();
                return path;
            }
            if !prev.contains_key(w.as_str()) {
                prev.insert(w.as_str(), v);
                queue.push_back(w.as_str());
            }
        }
    }
    vec![start.clone()]
}
