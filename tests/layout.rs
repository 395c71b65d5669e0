//! The source tree's layout, as issue 13 wants it: top-level modules that depend on
//! each other only one way, a thin `main.rs`, small files, small functions where the
//! data flows (`src/pipeline/`, `src/store/`), and a store written without macros.
//!
//! Reads `src/` as text; needs no database. The allow-lists below name what is not
//! there yet. They must only shrink: an entry that no longer applies fails too, so
//! that the fix and the shorter list land together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Groups of top-level modules that still depend on each other, one entry per group
/// (the modules that all reach each other). None is left: `config` ↔ `store`,
/// `app` ↔ `authoring` and the daemon's context named by the stages it ran are gone and
/// must not come back.
const KNOWN_CYCLES: &[&[&str]] = &[];

/// Modules that must not name the runtime or the command line above them: the stages
/// take their own `Deps`, and operator and authoring commands a plain database handle.
const BELOW_THE_DAEMON: &[&str] = &[
    "domain",
    "config",
    "in_force",
    "rules",
    "store",
    "pipeline",
    "schedule",
    "metrics",
    "installation",
    "authoring",
    "ops",
    "init",
    "console",
];

/// What [`BELOW_THE_DAEMON`] must not name: the daemon's start-up and loops, the demo
/// that runs them, and the command line.
const ABOVE: &[&str] = &["app", "cli", "demo", "runtime"];

/// `src/main.rs` at most.
const MAX_MAIN_LINES: usize = 60;

/// A file under `src/` at most.
const MAX_FILE_LINES: usize = 400;

/// Files longer than [`MAX_FILE_LINES`] today, and why. Must only shrink.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "src/config/tests.rs",
        "the config's unit tests, one per key path checked",
    ),
    (
        "src/rules/tests.rs",
        "the rule sandbox's unit tests, one per limit",
    ),
];

/// Where functions are held to [`MAX_FN_LINES`].
const SMALL_FUNCTIONS_IN: &[&str] = &["src/pipeline", "src/store"];

/// A function there at most.
const MAX_FN_LINES: usize = 60;

/// Functions longer than [`MAX_FN_LINES`] today, by file and name. Must only shrink.
const LONG_FUNCTIONS: &[(&str, &str)] = &[];

#[test]
fn top_level_modules_form_no_cycle_but_the_known_ones() {
    let graph = Graph::of(&src());
    let groups = graph.cycles();
    let mut problems = Vec::new();
    for group in &groups {
        if !KNOWN_CYCLES
            .iter()
            .any(|known| group.iter().all(|m| known.contains(&m.as_str())))
        {
            problems.push(format!(
                "new cycle between {}:\n{}",
                group.iter().cloned().collect::<Vec<_>>().join(", "),
                graph.edges_within(group)
            ));
        }
    }
    for known in KNOWN_CYCLES {
        let known: BTreeSet<String> = known.iter().map(|m| m.to_string()).collect();
        if !groups.contains(&known) {
            problems.push(format!(
                "KNOWN_CYCLES lists {known:?}, which is no longer one cycle (the cycles now: \
                 {groups:?}): shrink the list"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn stages_and_operator_code_never_name_the_runtime_or_the_command_line() {
    let graph = Graph::of(&src());
    let reaching: Vec<String> = BELOW_THE_DAEMON
        .iter()
        .flat_map(|from| graph.uses(from))
        .filter(|(_, to, _)| ABOVE.contains(&to.as_str()))
        .map(|(from, to, at)| format!("{from} names {to} at {at}"))
        .collect();
    assert!(reaching.is_empty(), "{}", reaching.join("\n"));
}

#[test]
fn main_rs_is_thin() {
    let lines = line_count(&src().join("main.rs"));
    assert!(
        lines <= MAX_MAIN_LINES,
        "src/main.rs is {lines} lines (at most {MAX_MAIN_LINES}): move the work into src/cli/"
    );
}

#[test]
fn files_stay_small() {
    let mut problems = Vec::new();
    let mut long = BTreeSet::new();
    for file in rust_files(&src()) {
        let (name, lines) = (relative(&file), line_count(&file));
        if lines > MAX_FILE_LINES {
            long.insert(name.clone());
            if !LONG_FILES.iter().any(|(f, _)| *f == name) {
                problems.push(format!(
                    "{name} is {lines} lines (at most {MAX_FILE_LINES})"
                ));
            }
        }
    }
    for (file, _) in LONG_FILES {
        if !long.contains(*file) {
            problems.push(format!(
                "{file} is listed in LONG_FILES but is not over {MAX_FILE_LINES} lines (or is \
                 gone): remove it from the list"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_store_is_written_without_macros() {
    let mut found = Vec::new();
    for file in rust_files(&src().join("store")) {
        for (i, line) in read(&file).lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("macro_rules!") || line.starts_with("#[macro_export]") {
                found.push(format!("{}:{}: {line}", relative(&file), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "write store operations as methods of `Conn` (src/store/conn.rs), not macros:\n{}",
        found.join("\n")
    );
}

#[test]
fn functions_stay_small_in_the_pipeline_and_the_store() {
    let root = src().parent().unwrap().to_owned();
    let mut problems = Vec::new();
    let mut long = BTreeSet::new();
    for dir in SMALL_FUNCTIONS_IN {
        for file in rust_files(&root.join(dir)) {
            let name = relative(&file);
            for (function, lines) in functions(&read(&file)) {
                if lines <= MAX_FN_LINES {
                    continue;
                }
                long.insert((name.clone(), function.clone()));
                if !LONG_FUNCTIONS.contains(&(name.as_str(), function.as_str())) {
                    problems.push(format!(
                        "{name}: fn {function} is {lines} lines (at most {MAX_FN_LINES})"
                    ));
                }
            }
        }
    }
    for (file, function) in LONG_FUNCTIONS {
        if !long.contains(&(file.to_string(), function.to_string())) {
            problems.push(format!(
                "{file}: fn {function} is listed in LONG_FUNCTIONS but is not over \
                 {MAX_FN_LINES} lines (or is gone): remove it from the list"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn functions_are_measured_from_their_signature_to_their_closing_brace() {
    let text = "pub trait T {\n    fn declared(&self);\n}\n\nfn one() {}\n\npub(crate) async fn three(\n    a: u8,\n) {\n    let b = a;\n}\n\nimpl X {\n    pub fn four(&self) {\n        if true {\n        }\n    }\n}\n";
    assert_eq!(
        functions(text),
        [("one".into(), 1), ("three".into(), 5), ("four".into(), 4)]
    );
}

/// `use crate::X` and `crate::X::…` between the top-level modules of `src/` (`src/X.rs`
/// or `src/X/`), with where each is first named.
struct Graph {
    modules: BTreeSet<String>,
    /// (from, to) → `file:line` of the first reference.
    edges: BTreeMap<(String, String), String>,
}

impl Graph {
    fn of(src: &Path) -> Self {
        let module_of = |file: &Path| -> Option<String> {
            let first = file.strip_prefix(src).ok()?.components().next()?;
            let name = first.as_os_str().to_str()?;
            let name = name.strip_suffix(".rs").unwrap_or(name);
            // The crate's roots declare the modules; they are no module of their own.
            (name != "lib" && name != "main").then(|| name.to_owned())
        };
        let files: Vec<(String, PathBuf)> = rust_files(src)
            .into_iter()
            .filter_map(|f| Some((module_of(&f)?, f)))
            .collect();
        let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
        let mut edges = BTreeMap::new();
        for (from, file) in &files {
            for (line, to) in crate_references(&read(file)) {
                if to != *from && modules.contains(&to) {
                    let at = format!("{}:{line}", relative(file));
                    edges.entry((from.clone(), to)).or_insert(at);
                }
            }
        }
        Self { modules, edges }
    }

    /// The modules `from` names: (from, to, where).
    fn uses(&self, from: &str) -> Vec<(String, String, String)> {
        self.edges
            .iter()
            .filter(|((f, _), _)| f == from)
            .map(|((f, t), at)| (f.clone(), t.clone(), at.clone()))
            .collect()
    }

    fn reachable(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_owned()];
        while let Some(m) = next.pop() {
            for (_, to, _) in self.uses(&m) {
                if seen.insert(to.clone()) {
                    next.push(to);
                }
            }
        }
        seen
    }

    /// Every group of two or more modules that all reach each other.
    fn cycles(&self) -> BTreeSet<BTreeSet<String>> {
        let reach: BTreeMap<&String, BTreeSet<String>> = self
            .modules
            .iter()
            .map(|m| (m, self.reachable(m)))
            .collect();
        self.modules
            .iter()
            .map(|a| {
                self.modules
                    .iter()
                    .filter(|b| a == *b || (reach[a].contains(*b) && reach[b].contains(a)))
                    .cloned()
                    .collect::<BTreeSet<_>>()
            })
            .filter(|group| group.len() > 1)
            .collect()
    }

    /// The references within `group`, one per line: `a → b (file:line)`.
    fn edges_within(&self, group: &BTreeSet<String>) -> String {
        self.edges
            .iter()
            .filter(|((f, t), _)| group.contains(f) && group.contains(t))
            .map(|((f, t), at)| format!("  {f} → {t} ({at})"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The top-level names after each `crate::` in `text` (comment lines left out), with
/// their line numbers; `crate::{a::X, b}` gives `a` and `b`.
fn crate_references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                found.extend(
                    inner
                        .split(',')
                        .map(|item| (n + 1, identifier(item.trim()))),
                );
            } else {
                found.push((n + 1, identifier(rest)));
            }
        }
    }
    found
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect()
}

/// Every function with a body in rustfmt-formatted `text`, with its length in lines: from
/// the line that starts with (`pub `, `pub(…) `, `const `, `async `, `unsafe `) `fn ` to
/// the first later line that is the same indentation and `}`.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(name) = function_name(trimmed) else {
            continue;
        };
        // A declaration (`fn f(&self);`) ends with `;` before any body opens.
        let opens = lines[start..]
            .iter()
            .find(|l| l.contains('{') || l.trim_end().ends_with(';'));
        if !opens.is_some_and(|l| l.contains('{')) {
            continue;
        }
        if trimmed.ends_with('}') && trimmed.matches('{').count() == trimmed.matches('}').count() {
            found.push((name, 1));
            continue;
        }
        let end = format!("{}}}", &line[..line.len() - trimmed.len()]);
        let length = lines[start + 1..]
            .iter()
            .position(|l| *l == end)
            .map_or(lines.len() - start, |at| at + 2);
        found.push((name, length));
    }
    found
}

/// The name of the function `trimmed` starts, if it starts one.
fn function_name(trimmed: &str) -> Option<String> {
    let mut rest = trimmed;
    if let Some(after) = rest.strip_prefix("pub(") {
        rest = after.split_once(") ")?.1;
    } else if let Some(after) = rest.strip_prefix("pub ") {
        rest = after;
    }
    for qualifier in ["const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let name = identifier(rest.strip_prefix("fn ")?);
    (!name.is_empty()).then_some(name)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `file` relative to the package, `/`-separated: `src/store/mod.rs`.
fn relative(file: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let relative = file.strip_prefix(root).unwrap_or(file);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The `.rs` files under `dir`, sorted; none when `dir` does not exist.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.map(|e| e.unwrap().path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn line_count(file: &Path) -> usize {
    read(file).lines().count()
}
