//! The architecture rules, checked on the source tree (ARCHITECTURE.md):
//!
//! 1. No import cycle between modules: the graph of `use crate::…`, `use super::…`, `use self::…`
//!    and `crate::a::b` / `super::x` paths anywhere in the code (function bodies included) of every
//!    non-test `.rs` file of `engine/src` and `app/src` has no strongly connected component of more
//!    than one module. A failure names every module of each cycle and every edge with its file:line.
//! 2. The app reaches the engine only through its front door: no `app/src` file names a
//!    `tessera_engine::` path other than `tessera_engine::api…` (test modules included).
//!
//! The scanner is a small tokenizer (comments, strings and char literals blanked, line numbers
//! kept) plus a `use`-tree parser, so it handles multi-line `{…}` groups, `pub use`, `self` in
//! groups, `super::super`, renames and globs. An edge goes to the longest prefix of the path that
//! is a module (a file or an inline `mod x { … }`): `crate::runtime::Supervisor` is an edge to
//! `runtime`, `crate::runtime::doctor::probe` to `runtime::doctor`. Paths relative to a module's own
//! children (`mod launch; pub use launch::CommBackend;`) are the module tree itself, not imports.
//! `#[cfg(test)]` items and `tests/` folders are left out: test code may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its crate (`engine`, `app`, or a binary) and its path inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ModuleId {
    krate: String,
    path: Vec<String>,
}

impl std::fmt::Display for ModuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}::crate", self.krate)
        } else {
            write!(f, "{}::{}", self.krate, self.path.join("::"))
        }
    }
}

/// A path found in the code, anchored at `crate`, `super`, `self` or an external crate.
#[derive(Clone, Debug)]
struct FoundPath {
    /// The module whose code holds the path (an inline module when inside one).
    from: ModuleId,
    segments: Vec<String>,
    line: usize,
}

/// What one file declares and names.
#[derive(Debug, Default)]
struct Scan {
    inline_modules: Vec<ModuleId>,
    paths: Vec<FoundPath>,
}

#[derive(Clone, Debug, PartialEq)]
struct Tok {
    text: String,
    line: usize,
}

/// Blanks comments, string literals and char literals (newlines kept, so lines still count).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident_char = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if ch == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !ident_char(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident_char(c[i - 2]))))
            && {
                // r"…", r#"…"#: count the hashes, then a quote must follow.
                let mut j = i + 1;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                c.get(j) == Some(&'"')
            }
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            out.push(' ');
            for _ in 0..=hashes {
                out.push(' ');
            }
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if ch == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if ch == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{1F600}'); a lifetime ('a) has no closing quote.
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// Identifiers, `::` and single punctuation characters, each with its line.
fn tokenize(src: &str) -> Vec<Tok> {
    let text = strip(src);
    let c: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            toks.push(Tok { text: c[start..i].iter().collect(), line });
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            toks.push(Tok { text: "::".into(), line });
            i += 2;
        } else {
            toks.push(Tok { text: ch.to_string(), line });
            i += 1;
        }
    }
    toks
}

fn is_ident(t: &str) -> bool {
    t.chars().next().is_some_and(|ch| ch.is_alphabetic() || ch == '_')
}

/// Index of the token closing the bracket opened at `open`.
fn matching(toks: &[Tok], open: usize) -> usize {
    let (o, c) = match toks[open].text.as_str() {
        "{" => ("{", "}"),
        "[" => ("[", "]"),
        _ => ("(", ")"),
    };
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t.text == o {
            depth += 1;
        } else if t.text == c {
            depth -= 1;
            if depth == 0 {
                return k;
            }
        }
    }
    toks.len() - 1
}

/// `#[cfg(test)]`, `#[cfg(all(test, …))]`: the attribute's tokens between `[` and `]`.
fn is_cfg_test(attr: &[Tok]) -> bool {
    let words: Vec<&str> = attr.iter().map(|t| t.text.as_str()).collect();
    matches!(words.as_slice(), ["cfg", "(", "test", ")"]) || words.starts_with(&["cfg", "(", "all", "(", "test"])
}

/// The end (exclusive) of the item starting at `start`: after its `;` or its closing `}`.
fn item_end(toks: &[Tok], start: usize) -> usize {
    let mut k = start;
    while k < toks.len() {
        match toks[k].text.as_str() {
            ";" => return k + 1,
            "{" => return matching(toks, k) + 1,
            "(" | "[" => k = matching(toks, k) + 1,
            "#" => {
                // Another attribute on the same item.
                let open = if toks.get(k + 1).is_some_and(|t| t.text == "[") { k + 1 } else { k + 2 };
                k = matching(toks, open) + 1;
            }
            _ => k += 1,
        }
    }
    toks.len()
}

/// Expands the `use` tree starting at `k` (after `use`) into leaf paths; returns the index after `;`.
fn use_tree(toks: &[Tok], mut k: usize, prefix: &[String], leaves: &mut Vec<(Vec<String>, usize)>) -> usize {
    let mut path = prefix.to_vec();
    if toks.get(k).is_some_and(|t| t.text == "::") {
        k += 1; // leading `::`
    }
    while k < toks.len() {
        let t = &toks[k];
        match t.text.as_str() {
            "{" => {
                k += 1;
                loop {
                    match toks.get(k).map(|t| t.text.as_str()) {
                        Some("}") => return k + 1,
                        Some(",") => k += 1,
                        None => return k,
                        _ => k = use_tree(toks, k, &path, leaves),
                    }
                }
            }
            "*" => {
                leaves.push((path, t.line));
                return k + 1;
            }
            "self" => {
                // A leading `self::` anchors at the module; `a::{self, …}` names `a` itself.
                if toks.get(k + 1).is_some_and(|n| n.text == "::") {
                    path.push("self".into());
                    k += 2;
                } else {
                    leaves.push((path, t.line));
                    return skip_rename(toks, k + 1);
                }
            }
            w if is_ident(w) => {
                path.push(w.to_string());
                if toks.get(k + 1).is_some_and(|n| n.text == "::") {
                    k += 2;
                } else {
                    leaves.push((path, t.line));
                    return skip_rename(toks, k + 1);
                }
            }
            _ => return k,
        }
    }
    k
}

/// After a leaf: skips `as name`.
fn skip_rename(toks: &[Tok], k: usize) -> usize {
    if toks.get(k).is_some_and(|t| t.text == "as") {
        k + 2
    } else {
        k
    }
}

/// The declarations and anchored paths of one file whose module is `module`.
fn scan(src: &str, module: &ModuleId) -> Scan {
    let toks = tokenize(src);
    let mut out = Scan::default();
    // Inline modules open at a brace depth and close when the depth drops below it.
    let mut stack: Vec<(ModuleId, usize)> = vec![(module.clone(), 0)];
    let mut depth = 0usize;
    let mut k = 0;
    while k < toks.len() {
        let t = toks[k].text.as_str();
        let here = stack.last().expect("the file's own module").0.clone();
        match t {
            "#" => {
                let inner = toks.get(k + 1).is_some_and(|t| t.text == "!");
                let open = if inner { k + 2 } else { k + 1 };
                if toks.get(open).is_none_or(|t| t.text != "[") {
                    k += 1;
                    continue;
                }
                let close = matching(&toks, open);
                if is_cfg_test(&toks[open + 1..close]) {
                    if inner {
                        return out; // `#![cfg(test)]`: the whole file is test code.
                    }
                    k = item_end(&toks, close + 1);
                } else {
                    k = close + 1;
                }
            }
            "mod" if toks.get(k + 2).is_some_and(|t| t.text == "{") && is_ident(&toks[k + 1].text) => {
                let mut path = here.path.clone();
                path.push(toks[k + 1].text.clone());
                let id = ModuleId { krate: here.krate.clone(), path };
                out.inline_modules.push(id.clone());
                depth += 1;
                stack.push((id, depth));
                k += 3;
            }
            "{" => {
                depth += 1;
                k += 1;
            }
            "}" => {
                if stack.len() > 1 && stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                k += 1;
            }
            "use" => {
                let mut leaves = Vec::new();
                k = use_tree(&toks, k + 1, &[], &mut leaves);
                for (segments, line) in leaves {
                    out.paths.push(FoundPath { from: here.clone(), segments, line });
                }
            }
            w if is_ident(w)
                && toks.get(k + 1).is_some_and(|n| n.text == "::")
                && (k == 0 || (toks[k - 1].text != "::" && toks[k - 1].text != "$")) =>
            {
                // A path in code: `crate::a::b`, `super::x::f(…)`, `tessera_engine::api::X`.
                let line = toks[k].line;
                let mut segments = vec![w.to_string()];
                let mut j = k + 1;
                while toks.get(j).is_some_and(|t| t.text == "::") && toks.get(j + 1).is_some_and(|t| is_ident(&t.text))
                {
                    segments.push(toks[j + 1].text.clone());
                    j += 2;
                }
                out.paths.push(FoundPath { from: here, segments, line });
                k = j;
            }
            _ => k += 1,
        }
    }
    out
}

/// The module an anchored path lands in: the longest prefix that is a module. `None` for paths
/// that are not anchored at `crate`, `super` or `self` (other crates, std, child-relative paths).
fn target(p: &FoundPath, modules: &BTreeSet<ModuleId>) -> Option<ModuleId> {
    let mut segs = p.segments.iter().peekable();
    let mut base = match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        Some("self") => {
            segs.next();
            p.from.path.clone()
        }
        Some("super") => {
            let mut base = p.from.path.clone();
            while segs.peek().is_some_and(|s| *s == "super") {
                segs.next();
                base.pop();
            }
            base
        }
        _ => return None,
    };
    for s in segs {
        let mut next = base.clone();
        next.push(s.clone());
        if modules.contains(&ModuleId { krate: p.from.krate.clone(), path: next.clone() }) {
            base = next;
        } else {
            break;
        }
    }
    Some(ModuleId { krate: p.from.krate.clone(), path: base })
}

/// Crate and module path of `file` under a crate's `src`.
fn module_of(krate: &str, src: &Path, file: &Path) -> ModuleId {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut krate = krate.to_string();
    if parts.first().is_some_and(|p| p == "bin") {
        // src/bin/NAME.rs and src/bin/NAME/… are crates of their own.
        parts.remove(0);
        let name = parts.remove(0);
        krate = format!("{krate}-bin-{}", name.trim_end_matches(".rs"));
        if parts.is_empty() {
            parts.push("main.rs".into());
        }
    } else if parts == ["main.rs"] {
        krate = format!("{krate}-bin-main");
    }
    let last = parts.pop().expect("a file name");
    if !["lib.rs", "main.rs", "mod.rs"].contains(&last.as_str()) {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    ModuleId { krate, path: parts }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// An import edge and where it is written.
#[derive(Clone, Debug)]
struct Edge {
    from: ModuleId,
    to: ModuleId,
    at: String,
}

/// Tarjan's strongly connected components of more than one node.
fn cycles(nodes: &BTreeSet<ModuleId>, edges: &[Edge]) -> Vec<Vec<ModuleId>> {
    let ids: Vec<&ModuleId> = nodes.iter().collect();
    let index_of: BTreeMap<&ModuleId, usize> = ids.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut adj = vec![BTreeSet::new(); ids.len()];
    for e in edges {
        if let (Some(&a), Some(&b)) = (index_of.get(&e.from), index_of.get(&e.to)) {
            if a != b {
                adj[a].insert(b);
            }
        }
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[BTreeSet<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                s.out.push(scc);
            }
        }
    }
    let n = ids.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    s.out.into_iter().map(|scc| scc.into_iter().map(|i| ids[i].clone()).collect()).collect()
}

/// Every module, every import edge and every app path into the engine outside `api`.
struct Graph {
    modules: BTreeSet<ModuleId>,
    edges: Vec<Edge>,
    engine_bypasses: Vec<String>,
}

/// `files`: (crate name, its `src`, file path, source text).
fn graph(files: &[(String, PathBuf, PathBuf, String)]) -> Graph {
    let mut modules = BTreeSet::new();
    let mut scans = Vec::new();
    for (krate, src, file, text) in files {
        let id = module_of(krate, src, file);
        let scan = scan(text, &id);
        modules.insert(id);
        modules.extend(scan.inline_modules.iter().cloned());
        scans.push((file, krate, scan));
    }
    let mut edges = Vec::new();
    let mut engine_bypasses = Vec::new();
    for (file, krate, scan) in &scans {
        for p in &scan.paths {
            let at = format!("{}:{}", file.display(), p.line);
            if krate.as_str() == "app"
                && p.segments[0] == "tessera_engine"
                && p.segments.get(1).is_none_or(|s| s != "api")
            {
                engine_bypasses.push(format!("{at}: {}", p.segments.join("::")));
            }
            if let Some(to) = target(p, &modules) {
                if to != p.from {
                    edges.push(Edge { from: p.from.clone(), to, at });
                }
            }
        }
    }
    Graph { modules, edges, engine_bypasses }
}

/// Explains each cycle: its modules, then every edge between them.
fn describe(g: &Graph) -> Vec<String> {
    cycles(&g.modules, &g.edges)
        .into_iter()
        .map(|scc| {
            let members: BTreeSet<&ModuleId> = scc.iter().collect();
            let mut text = format!(
                "import cycle between {}:",
                members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
            );
            // One line per edge and place (a `use` group names a module once per item).
            let inside: BTreeSet<String> = g
                .edges
                .iter()
                .filter(|e| members.contains(&e.from) && members.contains(&e.to))
                .map(|e| format!("\n    {} → {} at {}", e.from, e.to, e.at))
                .collect();
            text.extend(inside);
            text
        })
        .collect()
}

fn workspace_files() -> Vec<(String, PathBuf, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["engine", "app"] {
        let src = root.join(krate).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // Shown and resolved relative to the workspace: `engine/src/runtime/mod.rs`.
            let rel = Path::new(krate).join("src").join(path.strip_prefix(&src).expect("under src"));
            files.push((krate.to_string(), Path::new(krate).join("src"), rel, text));
        }
    }
    files
}

#[test]
fn no_import_cycles_and_the_app_uses_only_the_engine_api() {
    let started = std::time::Instant::now();
    let files = workspace_files();
    let g = graph(&files);
    let problems = describe(&g);
    println!(
        "{} files, {} modules, {} import edges, {} cycles, {} app paths outside tessera_engine::api ({:.0} ms)",
        files.len(),
        g.modules.len(),
        g.edges.len(),
        problems.len(),
        g.engine_bypasses.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    // The scan must see the workspace, or the checks below prove nothing.
    assert!(files.len() > 100 && g.edges.len() > 200, "the scan found too little: {} files", files.len());
    assert!(
        problems.is_empty(),
        "{} import cycle(s); cut each by moving the shared item to the module that owns it:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        g.engine_bypasses.is_empty(),
        "the app must reach the engine through tessera_engine::api (re-export what it needs there):\n  {}",
        g.engine_bypasses.join("\n  ")
    );
}

// The scanner itself, on small sources.

fn one(krate: &str, file: &str, text: &str) -> (String, PathBuf, PathBuf, String) {
    (krate.into(), PathBuf::from(format!("{krate}/src")), PathBuf::from(format!("{krate}/src/{file}")), text.into())
}

fn edges_of(g: &Graph) -> BTreeSet<(String, String)> {
    g.edges.iter().map(|e| (e.from.to_string(), e.to.to_string())).collect()
}

#[test]
fn use_trees_groups_super_super_and_body_paths_become_edges() {
    let files = [
        one("engine", "lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
        one("engine", "a/mod.rs", "pub mod inner;\npub struct A;"),
        one(
            "engine",
            "a/inner/deep.rs",
            "use super::super::A;\npub use crate::{\n    b::{self, B},\n    c::C as Cee,\n};\nfn f() { let _ = crate::c::make(); }",
        ),
        one("engine", "a/inner/mod.rs", "pub mod deep;"),
        one("engine", "b.rs", "pub struct B;"),
        one("engine", "c.rs", "pub struct C; pub fn make() {}"),
    ];
    let g = graph(&files);
    let e = edges_of(&g);
    for (from, to) in [
        ("engine::a::inner::deep", "engine::a"),
        ("engine::a::inner::deep", "engine::b"),
        ("engine::a::inner::deep", "engine::c"),
    ] {
        assert!(e.contains(&(from.into(), to.into())), "missing {from} → {to} in {e:?}");
    }
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn a_cycle_is_found_with_its_edges_and_test_code_is_left_out() {
    let files = [
        one("engine", "lib.rs", "pub mod x;\npub mod y;\npub mod z;"),
        one("engine", "x.rs", "// use crate::z::Z;\nuse crate::y::Y;\npub struct X;\nconst S: &str = \"crate::z::Z\";"),
        one("engine", "y.rs", "pub struct Y;\nfn f(x: super::x::X) -> super::x::X { x }"),
        one("engine", "z.rs", "pub struct Z;\n#[cfg(test)]\nmod tests {\n    use crate::x::X;\n}"),
    ];
    let g = graph(&files);
    let problems = describe(&g);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("engine::x → engine::y at engine/src/x.rs:2"), "{}", problems[0]);
    assert!(problems[0].contains("engine::y → engine::x at engine/src/y.rs:2"), "{}", problems[0]);
    assert!(!edges_of(&g).iter().any(|(_, to)| to == "engine::z"), "comments, strings and tests are not imports");
    assert!(!edges_of(&g).iter().any(|(from, _)| from == "engine::z"), "cfg(test) code is not an import");
}

#[test]
fn inline_modules_are_nodes_and_app_paths_outside_the_api_are_named() {
    let files = [
        one("engine", "lib.rs", "pub mod api;\npub mod planner;"),
        one("engine", "api/mod.rs", "pub mod tools {\n    pub use crate::planner::Preset;\n}\npub fn g() {}"),
        one("engine", "planner.rs", "pub struct Preset;\nfn h() { let _ = 'x'; let _: &'static str = r#\"crate::api::g\"#; }"),
        one("app", "lib.rs", "use tessera_engine::api::tools::Preset;\nuse tessera_engine::{api, planner::Preset as P};\nfn f() { tessera_engine::runtime::doctor::probe(); }"),
    ];
    let g = graph(&files);
    assert!(edges_of(&g).contains(&("engine::api::tools".into(), "engine::planner".into())), "{:?}", edges_of(&g));
    assert!(describe(&g).is_empty());
    assert_eq!(
        g.engine_bypasses,
        [
            "app/src/lib.rs:2: tessera_engine::planner::Preset",
            "app/src/lib.rs:3: tessera_engine::runtime::doctor::probe"
        ],
    );
}
