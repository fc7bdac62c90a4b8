//! The architecture invariants of `ARCHITECTURE.md` about who may know what, checked on the real
//! module graph: every file under `src/` is parsed with `syn`, placed at its module path, and
//! every path it names is resolved to an absolute one.
//!
//! What is seen: `use` trees (groups, globs, renames, `self`, `super`, `pub(crate)`, any number
//! of lines), inline paths in expressions, types, patterns, trait bounds and attribute paths,
//! method calls by name, and paths and method calls in the token streams of macro calls and
//! attribute arguments (`info!(…, crate::x::Y)`, `#[derive(sqlx::FromRow)]`). A name that comes
//! from a `use`, a `mod`, an item of the same module or a glob import of a module defined in
//! `src/` is resolved to the path it stands for.
//!
//! What is not seen: code that macros or derives generate (their inputs are seen, their output
//! is not), paths inside string literals (`#[serde(with = "…")]`), which type a method call
//! dispatches on (a method is matched by name only), names a glob brings in from outside
//! `src/`, and `#[path]` attributes (no file under `src/` uses one; a file the walk does not
//! reach is reported). Code under `#[cfg(test)]` (items, and files declared by a
//! `#[cfg(test)] mod`) is left out: the rules are about the module graph that ships.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::visit::Visit;

/// One Architecture Invariant, as data. `scope` and `exempt` are module paths (a module and
/// everything inside it; a trailing `!` means that module alone); `forbidden` and `allowed` are
/// path patterns: `a::b` matches `a::b` and everything under it, `*::A::f` any path ending in
/// `A::f`, `.name` a method call of that name.
struct Rule {
    id: &'static str,
    invariant: &'static str,
    scope: &'static [&'static str],
    exempt: &'static [&'static str],
    forbidden: &'static [&'static str],
    allowed: &'static [&'static str],
}

/// HTTP, seen from a layer that must not know it: the server framework, the HTTP types, the
/// client, and the crate's own HTTP layer.
const RULES: &[Rule] = &[
    Rule {
        id: "model-knows-no-mcp-http-sql-engine",
        invariant: "`model/` knows nothing of MCP, HTTP, SQL or the engine",
        scope: &["crate::model"],
        exempt: &[],
        forbidden: &[
            "rmcp",
            "axum",
            "http",
            "hyper",
            "reqwest",
            "sqlx",
            "crate::mcp",
            "crate::http",
            "crate::store",
            "crate::engine",
        ],
        allowed: &[],
    },
    Rule {
        id: "engine-knows-no-mcp-http-sql",
        invariant: "`engine/` knows nothing of MCP, HTTP or SQL; it uses `Store` and `Tx` methods, never queries",
        scope: &["crate::engine"],
        exempt: &[],
        forbidden: &[
            "rmcp",
            "axum",
            "http",
            "hyper",
            "reqwest",
            "sqlx",
            "crate::mcp",
            "crate::http",
        ],
        allowed: &[],
    },
    Rule {
        id: "only-engine-makes-approved-plan",
        invariant: "only the engine can make an `ApprovedPlan`",
        scope: &["crate"],
        exempt: &["crate::engine"],
        forbidden: &["*::ApprovedPlan::of_applying"],
        allowed: &[],
    },
    Rule {
        id: "auth-knows-no-axum-mcp-engine-store",
        invariant: "`auth/` knows nothing of axum, MCP, the engine or the store (and has no HTTP server types in it)",
        scope: &["crate::auth"],
        exempt: &[],
        forbidden: &[
            "axum",
            "hyper",
            "rmcp",
            "crate::mcp",
            "crate::http",
            "crate::engine",
            "crate::store",
        ],
        allowed: &[],
    },
    Rule {
        id: "providers-know-no-mcp-http-store",
        invariant: "providers know nothing of MCP, HTTP or the store; they see the model, their config and `ApprovedPlan`",
        scope: &["crate::providers"],
        exempt: &[],
        forbidden: &[
            "rmcp",
            "axum",
            "hyper",
            "crate::mcp",
            "crate::http",
            "crate::store",
            "crate::engine",
            "crate::audit",
            "crate::authz",
            "crate::auth",
            "crate::cli",
        ],
        allowed: &["crate::engine::ApprovedPlan"],
    },
    Rule {
        id: "only-store-knows-sql",
        invariant: "only `store/` knows nhi-mcp's own SQL; the one other user of `sqlx` is `providers/postgres.rs`",
        scope: &["crate"],
        exempt: &["crate::store", "crate::providers::postgres"],
        forbidden: &["sqlx"],
        allowed: &[],
    },
    Rule {
        id: "only-mcp-knows-mcp-types",
        invariant: "only `mcp/` knows MCP types; the transports (`http/`, `serve` in `cli/`) use rmcp only to plug in the server",
        scope: &["crate"],
        exempt: &["crate::mcp", "crate::http", "crate::cli!"],
        forbidden: &["rmcp"],
        allowed: &[],
    },
    Rule {
        id: "transports-use-rmcp-only-to-plug-in",
        invariant: "the transports (`http/`, `serve` in `cli/`) use rmcp only to plug an `NhiServer` into stdio or Streamable HTTP",
        scope: &["crate::http", "crate::cli!"],
        exempt: &[],
        forbidden: &["rmcp"],
        allowed: &["rmcp::transport", "rmcp::ServiceExt"],
    },
    Rule {
        id: "no-secret-in-mcp-or-audit",
        invariant: "secret material never crosses into `mcp/` or `audit/` (they never name `Secret` or read one)",
        scope: &["crate::mcp", "crate::audit"],
        exempt: &[],
        forbidden: &[
            "crate::model::Secret",
            "crate::model::secret",
            "secrecy",
            ".expose",
            ".expose_secret",
        ],
        allowed: &[],
    },
    Rule {
        id: "no-path-from-mcp-to-approval",
        invariant: "there is no path from an MCP session to an approval: no tool calls `Engine::approve` or `reject`",
        scope: &["crate::mcp"],
        exempt: &[],
        forbidden: &[
            ".approve",
            ".reject",
            ".approve_with_proof",
            ".reject_with_proof",
            "crate::engine::Engine::approve",
            "crate::engine::Engine::reject",
            "crate::engine::Engine::approve_with_proof",
            "crate::engine::Engine::reject_with_proof",
        ],
        allowed: &[],
    },
    Rule {
        id: "audit-knows-no-mcp-http",
        invariant: "`audit/` knows nothing of MCP or axum (kept from the old `use`-line check)",
        scope: &["crate::audit"],
        exempt: &[],
        forbidden: &["axum", "crate::mcp"],
        allowed: &[],
    },
    Rule {
        id: "authz-knows-no-http",
        invariant: "`authz/` knows nothing of axum (kept from the old `use`-line check)",
        scope: &["crate::authz"],
        exempt: &[],
        forbidden: &["axum"],
        allowed: &[],
    },
];

// ---------------------------------------------------------------------------------------------
// The model of the sources.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Use,
    Path,
    Macro,
    Method,
}

#[derive(Clone, Debug)]
struct Ref {
    file: String,
    line: usize,
    module: Vec<String>,
    written: String,
    /// For `Method`, the method's name alone.
    resolved: Vec<String>,
    kind: Kind,
}

/// What one module declares, for resolving names: its `use`s (name → path as written), its glob
/// imports, and the names of the items and modules it defines.
#[derive(Default)]
struct Scope {
    imports: HashMap<String, Vec<String>>,
    globs: Vec<Vec<String>>,
    items: BTreeSet<String>,
}

/// A file reached from a crate root, with its module path and whether it is test-only.
struct SourceFile {
    rel: String,
    text: String,
    module: Vec<String>,
    test_only: bool,
    ast: syn::File,
}

struct Crate {
    files: Vec<SourceFile>,
    scopes: HashMap<Vec<String>, Scope>,
    unreached: Vec<String>,
    problems: Vec<String>,
}

fn seg(s: &str) -> Vec<String> {
    s.split("::").map(str::to_owned).collect()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, syn::Meta::List(l) if {
                let t = l.tokens.to_string();
                t.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "test")
                    && !t.contains("not")
            })
    })
}

impl Crate {
    /// Walks the module tree from `src/lib.rs` (the library, `crate`) and `src/main.rs` (the
    /// binary, placed at `crate::main`, its `nhi_mcp::` paths read as `crate::`).
    fn load(src: &Path) -> Crate {
        let mut krate = Crate {
            files: Vec::new(),
            scopes: HashMap::new(),
            unreached: Vec::new(),
            problems: Vec::new(),
        };
        let lib = src.join("lib.rs");
        if lib.exists() {
            krate.load_file(src, &lib, vec!["crate".into()], true, false);
        }
        let main = src.join("main.rs");
        if main.exists() {
            krate.load_file(src, &main, seg("crate::main"), true, false);
        }
        let reached: BTreeSet<String> = krate.files.iter().map(|f| f.rel.clone()).collect();
        for p in walk(src) {
            let rel = rel(src, &p);
            if !reached.contains(&rel) {
                krate.unreached.push(rel);
            }
        }
        for f in &krate.files {
            collect_scopes(&f.ast.items, &f.module, &mut krate.scopes);
        }
        krate
    }

    fn load_file(&mut self, src: &Path, path: &Path, module: Vec<String>, root: bool, test: bool) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.problems
                    .push(format!("{}: cannot read: {e}", path.display()));
                return;
            }
        };
        let ast = match syn::parse_file(&text) {
            Ok(a) => a,
            Err(e) => {
                self.problems
                    .push(format!("{}: does not parse: {e}", rel(src, path)));
                return;
            }
        };
        // Children of `a/mod.rs`, `lib.rs`, `main.rs` live in `a/`; those of `a/b.rs` in `a/b/`.
        let dir = if root || path.file_name().is_some_and(|n| n == "mod.rs") {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            path.with_extension("")
        };
        let mut children = Vec::new();
        out_of_line_mods(&ast.items, &dir, &module, test, &mut children);
        self.files.push(SourceFile {
            rel: rel(src, path),
            text: text.clone(),
            module,
            test_only: test,
            ast,
        });
        for (dir, name, module, test) in children {
            let flat = dir.join(format!("{name}.rs"));
            let nested = dir.join(&name).join("mod.rs");
            let file = if flat.exists() { flat } else { nested };
            self.load_file(src, &file, module, false, test);
        }
    }
}

/// `mod x;` declarations, also inside inline modules (`mod a { mod b; }` is `a/b.rs`).
fn out_of_line_mods(
    items: &[syn::Item],
    dir: &Path,
    module: &[String],
    test: bool,
    out: &mut Vec<(PathBuf, String, Vec<String>, bool)>,
) {
    for item in items {
        if let syn::Item::Mod(m) = item {
            let name = m.ident.to_string();
            let mut child = module.to_vec();
            child.push(name.clone());
            let test = test || is_cfg_test(&m.attrs);
            match &m.content {
                None => out.push((dir.to_path_buf(), name, child, test)),
                Some((_, inner)) => out_of_line_mods(inner, &dir.join(&name), &child, test, out),
            }
        }
    }
}

fn collect_scopes(
    items: &[syn::Item],
    module: &[String],
    scopes: &mut HashMap<Vec<String>, Scope>,
) {
    for item in items {
        let scope = scopes.entry(module.to_vec()).or_default();
        match item {
            syn::Item::Use(u) => {
                let mut prefix = Vec::new();
                if u.leading_colon.is_some() {
                    prefix.push(String::new());
                }
                use_leaves(&u.tree, &mut prefix, &mut |path, name| match name {
                    Some(name) if name != "_" => {
                        scope.imports.insert(name, path);
                    }
                    Some(_) => {}
                    None => scope.globs.push(path),
                });
            }
            syn::Item::Mod(m) => {
                scope.items.insert(m.ident.to_string());
                let mut child = module.to_vec();
                child.push(m.ident.to_string());
                if let Some((_, inner)) = &m.content {
                    collect_scopes(inner, &child, scopes);
                }
            }
            other => {
                if let Some(name) = item_name(other) {
                    scope.items.insert(name);
                }
            }
        }
    }
}

fn item_name(item: &syn::Item) -> Option<String> {
    Some(match item {
        syn::Item::Const(i) => i.ident.to_string(),
        syn::Item::Enum(i) => i.ident.to_string(),
        syn::Item::Fn(i) => i.sig.ident.to_string(),
        syn::Item::Static(i) => i.ident.to_string(),
        syn::Item::Struct(i) => i.ident.to_string(),
        syn::Item::Trait(i) => i.ident.to_string(),
        syn::Item::Type(i) => i.ident.to_string(),
        syn::Item::Union(i) => i.ident.to_string(),
        syn::Item::Macro(i) => i.ident.as_ref()?.to_string(),
        _ => return None,
    })
}

/// Calls `f(path as written, Some(name it binds) | None for a glob)` for every leaf of a use
/// tree. `self` in a group binds the group's own path under its last segment.
fn use_leaves(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    f: &mut dyn FnMut(Vec<String>, Option<String>),
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, f);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                let last = prefix.last().cloned().unwrap_or_default();
                f(prefix.clone(), Some(last));
            } else {
                let mut p = prefix.clone();
                p.push(name.clone());
                f(p, Some(name));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut p = prefix.clone();
            if r.ident != "self" {
                p.push(r.ident.to_string());
            }
            f(p, Some(r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => f(prefix.clone(), None),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix, f);
            }
        }
    }
}

impl Crate {
    /// The absolute path `path` (as written in `module`) stands for. A path that starts with
    /// neither `crate`, `self`, `super` nor a name in scope is an outside crate's (or a local
    /// name's) and stays as written; `::x` is always an outside crate's.
    fn resolve(&self, module: &[String], path: &[String], depth: usize) -> Vec<String> {
        let Some(first) = path.first() else {
            return Vec::new();
        };
        let rest = &path[1..];
        let join = |base: Vec<String>, rest: &[String]| {
            let mut b = base;
            b.extend(rest.iter().cloned());
            b
        };
        if depth > 16 {
            return path.to_vec();
        }
        match first.as_str() {
            "" => return rest.to_vec(),
            "crate" | "$crate" => {
                // `crate` in the binary is the binary; the library is `nhi_mcp`.
                if module.get(1).is_some_and(|m| m == "main") {
                    return join(seg("crate::main"), rest);
                }
                return join(vec!["crate".into()], rest);
            }
            "nhi_mcp" => return join(vec!["crate".into()], rest),
            "self" => return join(module.to_vec(), rest),
            "super" => {
                let mut base = module.to_vec();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                return join(base, rest);
            }
            _ => {}
        }
        let Some(scope) = self.scopes.get(module) else {
            return path.to_vec();
        };
        if let Some(target) = scope.imports.get(first) {
            // A `use` is resolved in the module that holds it; `use x::y` where `x` is an
            // outside crate stays as is.
            let base = if target.first() == Some(first) && target.len() == 1 {
                target.clone()
            } else {
                self.resolve(module, target, depth + 1)
            };
            return join(base, rest);
        }
        if scope.items.contains(first) {
            return join(module.to_vec(), path);
        }
        for glob in &scope.globs {
            let g = self.resolve(module, glob, depth + 1);
            if self
                .scopes
                .get(&g)
                .is_some_and(|s| s.items.contains(first) || s.imports.contains_key(first))
            {
                return join(g, path);
            }
        }
        path.to_vec()
    }

    /// Every path and method call named by code that ships.
    fn refs(&self) -> (Vec<Ref>, usize) {
        let mut out = Vec::new();
        let mut skipped = 0;
        for f in &self.files {
            if f.test_only {
                skipped += 1;
                continue;
            }
            let mut v = Collector {
                krate: self,
                file: &f.rel,
                lines: f.text.lines().collect(),
                module: f.module.clone(),
                out: &mut out,
                skipped_test_items: 0,
            };
            v.visit_file(&f.ast);
            skipped += v.skipped_test_items;
        }
        (out, skipped)
    }
}

struct Collector<'a> {
    krate: &'a Crate,
    file: &'a str,
    lines: Vec<&'a str>,
    module: Vec<String>,
    out: &'a mut Vec<Ref>,
    skipped_test_items: usize,
}

impl Collector<'_> {
    /// The first line that holds the path as written, else its longest tail that one line
    /// holds (a leaf of a multi-line `use` group), else 0. Without `proc-macro2`'s
    /// `span-locations` (which would rebuild every proc macro of the crate) `syn` gives no lines.
    fn line_of(&self, segs: &[String]) -> usize {
        for tail in (0..segs.len()).map(|k| &segs[k..]) {
            let needle = tail.join("::");
            if needle.is_empty() {
                continue;
            }
            for (n, l) in self.lines.iter().enumerate() {
                let mut from = 0;
                while let Some(at) = l[from..].find(&needle) {
                    let at = from + at;
                    let before = l[..at].chars().next_back();
                    let after = l[at + needle.len()..].chars().next();
                    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    if !word(before) && !word(after) {
                        return n + 1;
                    }
                    from = at + needle.len();
                }
            }
        }
        0
    }

    fn push(&mut self, kind: Kind, written: Vec<String>) {
        let first = written.first().map(String::as_str).unwrap_or_default();
        let in_scope = self.krate.scopes.get(&self.module).is_some_and(|s| {
            s.imports.contains_key(first) || s.items.contains(first) || !s.globs.is_empty()
        });
        let anchored = matches!(
            first,
            "" | "crate" | "$crate" | "self" | "super" | "nhi_mcp"
        );
        if kind != Kind::Use && written.len() < 2 && !anchored && !in_scope {
            return;
        }
        let resolved = self.krate.resolve(&self.module, &written, 0);
        if kind != Kind::Use && resolved == written && written.len() < 2 {
            return;
        }
        let line = self.line_of(&written);
        self.out.push(Ref {
            file: self.file.to_owned(),
            line,
            module: self.module.clone(),
            written: written.join("::"),
            resolved,
            kind,
        });
    }

    fn method(&mut self, name: String) {
        let dotted = format!(".{name}");
        let line = self
            .lines
            .iter()
            .position(|l| {
                l.match_indices(&dotted).any(|(at, _)| {
                    !l[at + dotted.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            })
            .map_or(0, |n| n + 1);
        self.out.push(Ref {
            file: self.file.to_owned(),
            line,
            module: self.module.clone(),
            written: format!(".{name}"),
            resolved: vec![name],
            kind: Kind::Method,
        });
    }

    /// Paths (`a::b`, `$crate::x`, `::x`) and method calls (`.f(`) in a token stream.
    fn tokens(&mut self, tokens: TokenStream) {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        let punct =
            |i: usize, c: char| matches!(tts.get(i), Some(TokenTree::Punct(p)) if p.as_char() == c);
        let ident = |i: usize| match tts.get(i) {
            Some(TokenTree::Ident(id)) => Some(id.clone()),
            _ => None,
        };
        let colons = |i: usize| punct(i, ':') && punct(i + 1, ':');
        let mut i = 0;
        while i < tts.len() {
            if let TokenTree::Group(g) = &tts[i] {
                self.tokens(g.stream());
                i += 1;
                continue;
            }
            if punct(i, '.')
                && let Some(id) = ident(i + 1)
                && matches!(tts.get(i + 2), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
            {
                self.method(id.to_string());
                i += 2;
                continue;
            }
            let (mut segs, mut j) = if punct(i, '$')
                && let Some(id) = ident(i + 1)
                && id == "crate"
            {
                (vec!["$crate".to_owned()], i + 2)
            } else if colons(i)
                && (i == 0 || !matches!(tts[i - 1], TokenTree::Ident(_)))
                && let Some(id) = ident(i + 2)
            {
                (vec![String::new(), id.to_string()], i + 3)
            } else if let Some(id) = ident(i) {
                (vec![id.to_string()], i + 1)
            } else {
                i += 1;
                continue;
            };
            while colons(j)
                && let Some(id) = ident(j + 2)
            {
                segs.push(id.to_string());
                j += 3;
            }
            if segs.len() >= 2 || segs[0] == "$crate" {
                self.push(Kind::Macro, segs);
            }
            i = j;
        }
    }

    fn enter(&mut self, attrs: &[syn::Attribute]) -> bool {
        if is_cfg_test(attrs) {
            self.skipped_test_items += 1;
            return false;
        }
        true
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match i {
            syn::Item::Const(x) => &x.attrs,
            syn::Item::Enum(x) => &x.attrs,
            syn::Item::Fn(x) => &x.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Macro(x) => &x.attrs,
            syn::Item::Mod(x) => &x.attrs,
            syn::Item::Static(x) => &x.attrs,
            syn::Item::Struct(x) => &x.attrs,
            syn::Item::Trait(x) => &x.attrs,
            syn::Item::Type(x) => &x.attrs,
            syn::Item::Use(x) => &x.attrs,
            _ => &[],
        };
        // `mod x;` is followed by the walk; its file is marked test-only there.
        if matches!(i, syn::Item::Mod(m) if m.content.is_none()) {
            return;
        }
        if self.enter(attrs) {
            syn::visit::visit_item(self, i);
        }
    }

    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        let attrs: &[syn::Attribute] = match i {
            syn::ImplItem::Fn(x) => &x.attrs,
            syn::ImplItem::Const(x) => &x.attrs,
            syn::ImplItem::Type(x) => &x.attrs,
            _ => &[],
        };
        if self.enter(attrs) {
            syn::visit::visit_impl_item(self, i);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            self.module.push(m.ident.to_string());
            for a in &m.attrs {
                self.visit_attribute(a);
            }
            for item in items {
                self.visit_item(item);
            }
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if u.leading_colon.is_some() {
            prefix.push(String::new());
        }
        let mut leaves = Vec::new();
        use_leaves(&u.tree, &mut prefix, &mut |p, _| leaves.push(p));
        for l in leaves {
            self.push(Kind::Use, l);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if p.leading_colon.is_some() {
            segs.insert(0, String::new());
        }
        self.push(Kind::Path, segs);
        syn::visit::visit_path(self, p);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        self.method(m.method.to_string());
        syn::visit::visit_expr_method_call(self, m);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.visit_path(&m.path);
        self.tokens(m.tokens.clone());
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        self.visit_path(a.path());
        if let syn::Meta::List(l) = &a.meta {
            self.tokens(l.tokens.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

fn in_scope(module: &[String], pattern: &str) -> bool {
    let (pattern, exact) = match pattern.strip_suffix('!') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let p = seg(pattern);
    if exact {
        module == p.as_slice()
    } else {
        module.starts_with(&p)
    }
}

fn matches(r: &Ref, pattern: &str) -> bool {
    if let Some(method) = pattern.strip_prefix('.') {
        return r.kind == Kind::Method && r.resolved.first().is_some_and(|m| m == method);
    }
    if r.kind == Kind::Method {
        return false;
    }
    if let Some(tail) = pattern.strip_prefix("*::") {
        return r.resolved.ends_with(&seg(tail));
    }
    r.resolved.starts_with(&seg(pattern))
}

#[derive(Debug)]
struct Violation {
    rule: &'static str,
    at: String,
}

struct Report {
    violations: Vec<Violation>,
    cycles: Vec<Vec<String>>,
    cycle_text: String,
    unreached: Vec<String>,
    problems: Vec<String>,
    edges: BTreeMap<(String, String), Ref>,
    refs: usize,
    files: usize,
    skipped_test: usize,
}

fn check(src: &Path) -> Report {
    let krate = Crate::load(src);
    let (refs, skipped_test) = krate.refs();
    let mut violations = Vec::new();
    for rule in RULES {
        for r in &refs {
            if !rule.scope.iter().any(|s| in_scope(&r.module, s))
                || rule.exempt.iter().any(|s| in_scope(&r.module, s))
            {
                continue;
            }
            let Some(hit) = rule.forbidden.iter().find(|f| matches(r, f)) else {
                continue;
            };
            if rule.allowed.iter().any(|a| matches(r, a)) {
                continue;
            }
            violations.push(Violation {
                rule: rule.id,
                at: format!(
                    "{}:{} (module {}) names `{}`{} — forbidden `{hit}`: {}",
                    r.file,
                    r.line,
                    r.module.join("::"),
                    r.written,
                    if r.kind == Kind::Method || r.written == r.resolved.join("::") {
                        String::new()
                    } else {
                        format!(" = `{}`", r.resolved.join("::"))
                    },
                    rule.invariant
                ),
            });
        }
    }
    // The top-level module graph: `crate::a` → `crate::b` when code in `a` names `crate::b…`.
    let mut edges: BTreeMap<(String, String), Ref> = BTreeMap::new();
    for r in &refs {
        if r.kind == Kind::Method {
            continue;
        }
        let (Some(from), Some(to)) = (r.module.get(1), r.resolved.get(1)) else {
            continue;
        };
        if r.resolved[0] != "crate" || from == to {
            continue;
        }
        edges
            .entry((from.clone(), to.clone()))
            .or_insert_with(|| r.clone());
    }
    let cycles = strongly_connected(&edges);
    let mut cycle_text = String::new();
    for c in &cycles {
        let _ = writeln!(cycle_text, "import cycle among {}:", c.join(", "));
        for ((a, b), r) in &edges {
            if c.contains(a) && c.contains(b) {
                let _ = writeln!(
                    cycle_text,
                    "  {a} → {b}: {}:{} names `{}`",
                    r.file, r.line, r.written
                );
            }
        }
        if let Some(path) = one_cycle(c, &edges) {
            let _ = writeln!(cycle_text, "  for example {}", path.join(" → "));
        }
    }
    Report {
        violations,
        cycles,
        cycle_text,
        unreached: krate.unreached,
        problems: krate.problems,
        edges,
        refs: refs.len(),
        files: krate.files.len(),
        skipped_test,
    }
}

/// Tarjan's strongly connected components with more than one module, each sorted.
fn strongly_connected(edges: &BTreeMap<(String, String), Ref>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let idx: HashMap<&String, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut adj = vec![Vec::new(); nodes.len()];
    for (a, b) in edges.keys() {
        adj[idx[a]].push(idx[b]);
    }
    struct T {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn strong(v: usize, adj: &[Vec<usize>], t: &mut T) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &adj[v] {
            match t.index[w] {
                None => {
                    strong(w, adj, t);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                c.push(w);
                if w == v {
                    break;
                }
            }
            t.out.push(c);
        }
    }
    let n = nodes.len();
    let mut t = T {
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    while let Some(v) = (0..n).find(|&v| t.index[v].is_none()) {
        strong(v, &adj, &mut t);
    }
    let mut out: Vec<Vec<String>> = t
        .out
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut c: Vec<String> = c.into_iter().map(|i| nodes[i].clone()).collect();
            c.sort();
            c
        })
        .collect();
    out.sort();
    out
}

/// The shortest cycle through the first module of a component, by breadth-first search.
fn one_cycle(c: &[String], edges: &BTreeMap<(String, String), Ref>) -> Option<Vec<String>> {
    let start = c.first()?;
    let mut prev: HashMap<&String, &String> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(a) = queue.pop_front() {
        for (x, b) in edges.keys() {
            if x != a || !c.contains(b) {
                continue;
            }
            if b == start {
                let mut back = vec![a.clone()];
                let mut at = a;
                while at != start {
                    at = prev[at];
                    back.push(at.clone());
                }
                back.reverse();
                back.push(start.clone());
                return Some(back);
            }
            if !prev.contains_key(b) {
                prev.insert(b, a);
                queue.push_back(b);
            }
        }
    }
    None
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn rel(src: &Path, p: &Path) -> String {
    let base = src.parent().unwrap_or(src);
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

// ---------------------------------------------------------------------------------------------
// The real tree.

fn real_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_layering_rule_holds_on_the_real_tree() {
    let report = check(&real_src());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(
        report.unreached.is_empty(),
        "files under src/ that no `mod` declares (or that a `#[path]` reaches, which this test does not follow): {:#?}",
        report.unreached
    );
    assert_eq!(
        report.files,
        walk(&real_src()).len(),
        "every file under src/ is parsed"
    );
    // Not vacuous: the checker sees the edges every reader of ARCHITECTURE.md expects.
    for (a, b) in [
        ("engine", "store"),
        ("engine", "model"),
        ("mcp", "engine"),
        ("http", "mcp"),
        ("cli", "engine"),
        ("store", "audit"),
    ] {
        assert!(
            report.edges.contains_key(&(a.to_owned(), b.to_owned())),
            "the checker does not see `{a}` → `{b}`; edges seen: {:?}",
            report.edges.keys().collect::<Vec<_>>()
        );
    }
    assert!(report.refs > 1000, "only {} paths seen", report.refs);
    let lines: Vec<String> = report
        .violations
        .iter()
        .map(|v| format!("[{}] {}", v.rule, v.at))
        .collect();
    assert!(
        lines.is_empty(),
        "{} layering violation(s):\n{}",
        lines.len(),
        lines.join("\n")
    );
    eprintln!(
        "layering: {} files, {} paths, {} test-only files or items left out",
        report.files, report.refs, report.skipped_test
    );
}

#[test]
fn the_real_top_level_module_graph_has_no_cycle() {
    let report = check(&real_src());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(
        report.cycles.is_empty(),
        "the top-level module graph has a cycle:\n{}",
        report.cycle_text
    );
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a tiny fake `src/` per rule, violating it in a way the old `use`-line check missed.

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let p = dir.path().join("src").join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    dir
}

/// The old check (`tests/it/contract.rs` before this file): per folder, a line that starts with
/// `use ` or `pub use ` and contains one of these.
const OLD_CHECK: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "rmcp",
            "axum",
            "sqlx",
            "crate::store",
            "crate::mcp",
            "crate::http",
            "crate::engine",
        ],
    ),
    (
        "engine",
        &["rmcp", "axum", "sqlx", "crate::mcp", "crate::http"],
    ),
    (
        "providers",
        &["rmcp", "axum", "crate::mcp", "crate::http", "crate::store"],
    ),
    ("audit", &["rmcp", "axum", "sqlx", "crate::mcp"]),
    ("authz", &["rmcp", "axum", "sqlx"]),
    ("cli", &["sqlx"]),
    ("http", &["sqlx"]),
];

fn old_check_flags(files: &[(&str, &str)]) -> bool {
    files.iter().any(|(path, text)| {
        OLD_CHECK.iter().any(|(folder, forbidden)| {
            path.starts_with(&format!("{folder}/"))
                && text.lines().any(|l| {
                    let l = l.trim_start();
                    (l.starts_with("use ") || l.starts_with("pub use "))
                        && forbidden.iter().any(|f| l.contains(f))
                })
        })
    })
}

fn rules_reported(files: &[(&str, &str)]) -> (BTreeSet<&'static str>, Report) {
    let dir = tree(files);
    let report = check(&dir.path().join("src"));
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(report.unreached.is_empty(), "{:#?}", report.unreached);
    (report.violations.iter().map(|v| v.rule).collect(), report)
}

#[track_caller]
fn only(rule: &str, files: &[(&str, &str)]) {
    let r = RULES
        .iter()
        .find(|r| r.id == rule)
        .expect("a rule of that id");
    assert!(
        !old_check_flags(files),
        "fixture for `{rule}` is one the old check already saw"
    );
    let (rules, report) = rules_reported(files);
    assert_eq!(
        rules,
        BTreeSet::from([r.id]),
        "fixture for `{rule}`: {:#?}",
        report.violations
    );
}

#[test]
fn model_rule_sees_a_multi_line_pub_crate_use_group() {
    only(
        "model-knows-no-mcp-http-sql-engine",
        &[
            ("lib.rs", "pub mod engine;\npub mod model;\n"),
            ("engine/mod.rs", "pub struct Engine;\n"),
            (
                "model/mod.rs",
                "pub mod ids;\npub(crate) use crate::{\n    engine::Engine,\n};\n",
            ),
            ("model/ids.rs", "pub struct Id;\n"),
        ],
    );
}

#[test]
fn engine_rule_sees_an_inline_super_path() {
    only(
        "engine-knows-no-mcp-http-sql",
        &[
            ("lib.rs", "pub mod engine;\npub mod mcp;\n"),
            ("engine/mod.rs", "mod query;\n"),
            (
                "engine/query.rs",
                "pub fn f() { let _ = super::super::mcp::tools::NhiServer::new(); }\n",
            ),
            ("mcp/mod.rs", "pub mod tools;\n"),
            ("mcp/tools.rs", "pub struct NhiServer;\n"),
        ],
    );
}

#[test]
fn approved_plan_rule_sees_a_renamed_self_import() {
    only(
        "only-engine-makes-approved-plan",
        &[
            ("lib.rs", "pub mod engine;\npub mod mcp;\n"),
            (
                "engine/mod.rs",
                "pub struct ApprovedPlan;\nimpl ApprovedPlan { pub fn of_applying() -> Self { Self } }\npub fn ok() { let _ = ApprovedPlan::of_applying(); }\n",
            ),
            ("mcp/mod.rs", "mod tools;\n"),
            (
                "mcp/tools.rs",
                "use crate::engine::{self as e};\nfn f() { let _ = e::ApprovedPlan::of_applying(); }\n",
            ),
        ],
    );
}

#[test]
fn auth_rule_sees_a_grouped_import() {
    only(
        "auth-knows-no-axum-mcp-engine-store",
        &[
            ("lib.rs", "pub mod auth;\npub mod authz;\npub mod store;\n"),
            ("authz/mod.rs", "pub struct Principal;\n"),
            ("store/mod.rs", "pub struct Store;\n"),
            (
                "auth/mod.rs",
                "use crate::{authz::Principal, store::Store};\npub fn f(_: Principal, _: Store) {}\n",
            ),
        ],
    );
}

#[test]
fn providers_rule_sees_a_path_inside_a_macro_but_allows_approved_plan() {
    only(
        "providers-know-no-mcp-http-store",
        &[
            (
                "lib.rs",
                "pub mod engine;\npub mod providers;\npub mod store;\n",
            ),
            ("engine/mod.rs", "pub struct ApprovedPlan;\n"),
            (
                "store/mod.rs",
                "pub struct Store;\nimpl Store { pub const NAME: &str = \"s\"; }\n",
            ),
            ("providers/mod.rs", "pub mod postgres;\n"),
            (
                "providers/postgres.rs",
                "use crate::engine::ApprovedPlan;\npub fn f(_: &ApprovedPlan) { tracing::info!(\"{}\", crate::store::Store::NAME); }\n",
            ),
        ],
    );
}

#[test]
fn sql_rule_sees_an_inline_sqlx_path_in_config_and_exempts_store_and_postgres() {
    only(
        "only-store-knows-sql",
        &[
            (
                "lib.rs",
                "pub mod config;\npub mod providers;\npub mod store;\n",
            ),
            (
                "config.rs",
                "pub fn f() { let _: Option<sqlx::SqlitePool> = None; }\n",
            ),
            (
                "store/mod.rs",
                "pub fn f() { let _ = sqlx::query(\"SELECT 1\"); }\n",
            ),
            ("providers/mod.rs", "pub mod postgres;\n"),
            (
                "providers/postgres.rs",
                "pub fn f() { let _ = sqlx::query(\"SELECT 1\"); }\n",
            ),
        ],
    );
}

#[test]
fn mcp_types_rule_sees_a_leading_colon_path_in_the_store() {
    only(
        "only-mcp-knows-mcp-types",
        &[
            ("lib.rs", "pub mod mcp;\npub mod store;\n"),
            ("mcp/mod.rs", "pub fn f(_: rmcp::model::Tool) {}\n"),
            ("store/mod.rs", "pub fn f(_: ::rmcp::model::Tool) {}\n"),
        ],
    );
}

#[test]
fn transport_rule_sees_a_multi_line_group_in_http() {
    only(
        "transports-use-rmcp-only-to-plug-in",
        &[
            ("lib.rs", "pub mod http;\n"),
            ("http/mod.rs", "mod bearer;\n"),
            (
                "http/bearer.rs",
                "use rmcp::{\n    model::CallToolRequest,\n    transport::streamable_http_server::StreamableHttpService,\n};\n",
            ),
        ],
    );
}

#[test]
fn transport_allowance_is_for_serve_in_cli_mod_only() {
    only(
        "only-mcp-knows-mcp-types",
        &[
            ("lib.rs", "pub mod cli;\n"),
            (
                "cli/mod.rs",
                "mod admin;\npub fn serve() { let _ = rmcp::transport::stdio(); }\n",
            ),
            (
                "cli/admin.rs",
                "pub fn f() { let _ = rmcp::transport::stdio(); }\n",
            ),
        ],
    );
}

#[test]
fn secret_rule_sees_a_glob_import_and_a_method_call() {
    only(
        "no-secret-in-mcp-or-audit",
        &[
            ("lib.rs", "pub mod audit;\npub mod model;\n"),
            ("model/mod.rs", "mod secret;\npub use secret::Secret;\n"),
            (
                "model/secret.rs",
                "pub struct Secret(String);\nimpl Secret { pub fn expose(&self) -> &str { &self.0 } }\n",
            ),
            (
                "audit/mod.rs",
                "use crate::model::*;\npub fn f(s: &Secret) -> String { s\n    .expose()\n    .to_owned() }\n",
            ),
        ],
    );
}

#[test]
fn approval_rule_sees_a_method_call_in_a_tool() {
    only(
        "no-path-from-mcp-to-approval",
        &[
            ("lib.rs", "pub mod engine;\npub mod mcp;\n"),
            (
                "engine/mod.rs",
                "pub struct Engine;\nimpl Engine { pub fn approve(&self) {} }\n",
            ),
            ("mcp/mod.rs", "mod tools;\n"),
            (
                "mcp/tools.rs",
                "use crate::engine::Engine;\npub fn f(e: &Engine) { e.approve(); }\n",
            ),
        ],
    );
}

#[test]
fn audit_rule_sees_a_super_import() {
    only(
        "audit-knows-no-mcp-http",
        &[
            ("lib.rs", "pub mod audit;\npub mod mcp;\n"),
            ("mcp/mod.rs", "pub fn tool_call_scopes() {}\n"),
            ("audit/mod.rs", "use super::mcp::tool_call_scopes;\n"),
        ],
    );
}

#[test]
fn authz_rule_sees_an_inline_trait_path() {
    only(
        "authz-knows-no-http",
        &[
            ("lib.rs", "pub mod authz;\n"),
            ("authz/mod.rs", "pub mod scopes;\n"),
            (
                "authz/scopes.rs",
                "pub struct Scope;\nimpl axum::response::IntoResponse for Scope {\n    fn into_response(self) -> axum::response::Response { todo!() }\n}\n",
            ),
        ],
    );
}

#[test]
fn every_rule_has_a_fixture() {
    // The fixture tests above name every rule once; a rule added without one fails here.
    let with_fixture = [
        "model-knows-no-mcp-http-sql-engine",
        "engine-knows-no-mcp-http-sql",
        "only-engine-makes-approved-plan",
        "auth-knows-no-axum-mcp-engine-store",
        "providers-know-no-mcp-http-store",
        "only-store-knows-sql",
        "only-mcp-knows-mcp-types",
        "transports-use-rmcp-only-to-plug-in",
        "no-secret-in-mcp-or-audit",
        "no-path-from-mcp-to-approval",
        "audit-knows-no-mcp-http",
        "authz-knows-no-http",
    ];
    let ids: BTreeSet<&str> = RULES.iter().map(|r| r.id).collect();
    assert_eq!(ids, BTreeSet::from(with_fixture));
}

#[test]
fn a_cycle_through_super_and_an_inline_path_is_reported_with_its_modules() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        (
            "a/mod.rs",
            "pub struct A;\npub fn f() { let _ = crate::b::B; }\n",
        ),
        ("b/mod.rs", "mod inner;\npub struct B;\n"),
        ("b/inner.rs", "use super::super::{\n    a::A,\n};\n"),
        ("c/mod.rs", "pub fn f() { let _ = crate::a::A; }\n"),
    ];
    let (rules, report) = rules_reported(&files);
    assert!(rules.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.cycles, vec![vec!["a".to_owned(), "b".to_owned()]]);
    assert!(
        report.cycle_text.contains("a → b: src/a/mod.rs:2"),
        "{}",
        report.cycle_text
    );
    assert!(
        report
            .cycle_text
            .contains("b → a: src/b/inner.rs:2 names `super::super::a::A`"),
        "{}",
        report.cycle_text
    );
    assert!(
        report.cycle_text.contains("a → b → a"),
        "{}",
        report.cycle_text
    );
}

#[test]
fn every_form_of_path_resolves_to_its_module() {
    let files = [
        ("lib.rs", "pub mod x;\npub mod y;\n#[cfg(test)]\nmod t;\n"),
        (
            "x/mod.rs",
            "pub mod deep;\npub use deep::Deep as Re;\npub struct X;\nmacro_rules! m { () => { $crate::y::Y } }\n",
        ),
        ("x/deep.rs", "pub struct Deep;\n"),
        ("t.rs", "use crate::y::Hidden;\n"),
        (
            "y/mod.rs",
            concat!(
                "use crate::x::{self as ex, deep::{Deep}};\n",
                "use super::x::*;\n",
                "pub struct Y;\n",
                "pub fn f() {\n",
                "    let _ = ex::X;\n",
                "    let _: Deep = Re;\n",
                "    let _ = X;\n",
                "    format!(\"{:?}\", self::Y);\n",
                "}\n",
                "#[cfg(test)]\n",
                "mod tests { use crate::t::Gone; }\n",
            ),
        ),
    ];
    let dir = tree(&files);
    let krate = Crate::load(&dir.path().join("src"));
    let (refs, skipped) = krate.refs();
    let seen: BTreeSet<String> = refs
        .iter()
        .filter(|r| r.kind != Kind::Method && r.resolved.first().is_some_and(|s| s == "crate"))
        .map(|r| format!("{} {}", r.module.join("::"), r.resolved.join("::")))
        .collect();
    for want in [
        "crate::x crate::x::deep::Deep",
        "crate::x crate::y::Y",
        "crate::y crate::x",
        "crate::y crate::x::deep::Deep",
        "crate::y crate::x::X",
        "crate::y crate::y::Y",
    ] {
        assert!(seen.contains(want), "`{want}` not in {seen:#?}");
    }
    assert!(
        !seen
            .iter()
            .any(|s| s.contains("Hidden") || s.contains("Gone")),
        "test-only code is left out: {seen:#?}"
    );
    assert_eq!(skipped, 2, "the test-only file and the test module");
}
