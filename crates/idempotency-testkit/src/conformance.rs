//! The conformance vectors written by the Python idempotency-kit 0.5.0 (see the README
//! of the set for what each file holds).
//!
//! **Where they are read from**, in this order:
//! 1. the directory named by `IDEMPOTENCY_CONFORMANCE_DIR`, when set (for a held-out set);
//! 2. `../shared/conformance` next to the workspace, when it exists (the shared set);
//! 3. the copy in this crate, `crates/idempotency-testkit/conformance/`.
//!
//! The choice is printed once per test process (`conformance vectors: <dir> (<why>)`).
//!
//! **Which files**: every `.json` file of the directory whose kind is known ([`Kind`]),
//! by its name (`decode_cases*.json`, `fingerprints*.json`, `records*.json`) or else by
//! the fields of its cases; so new files of new cases are consumed without a code change.
//! A `.json` file of no known kind is reported, never silently taken for another.
//!
//! **Numbers**: every field of a case is kept as raw JSON text ([`Case::raw`]), so an
//! integer beyond 64 bits or the difference between `1` and `1.0` is never lost to `f64`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use serde_json::value::RawValue;

/// The environment variable naming another directory of vectors.
pub const DIR_VAR: &str = "IDEMPOTENCY_CONFORMANCE_DIR";

/// The kinds of vector files the README describes (besides `metrics.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `fingerprints.json`: `{name, values, canonical, fingerprint}`.
    Fingerprints,
    /// `records.json`: what `save()` stores (`{name, constructor, args, …, raw | save_error}`).
    Records,
    /// `decode_cases.json`: what `get()` / `get_many()` make of a stored value.
    DecodeCases,
}

impl Kind {
    const ALL: [Self; 3] = [Self::Fingerprints, Self::Records, Self::DecodeCases];

    fn file_prefix(self) -> &'static str {
        match self {
            Self::Fingerprints => "fingerprints",
            Self::Records => "records",
            Self::DecodeCases => "decode_cases",
        }
    }

    /// Fields every case of the kind has.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Fingerprints => &["values", "canonical", "fingerprint"],
            Self::Records => &["constructor", "args", "redis_key"],
            Self::DecodeCases => &["raw_base64", "get", "get_many"],
        }
    }
}

/// The directory in use and why it was chosen.
fn located() -> &'static (PathBuf, &'static str) {
    static DIR: OnceLock<(PathBuf, &'static str)> = OnceLock::new();
    DIR.get_or_init(|| {
        let found = locate();
        eprintln!("conformance vectors: {} ({})", found.0.display(), found.1);
        found
    })
}

fn locate() -> (PathBuf, &'static str) {
    if let Some(dir) = std::env::var_os(DIR_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "{DIR_VAR}={} is not a directory",
            dir.display()
        );
        return (dir, "from IDEMPOTENCY_CONFORMANCE_DIR");
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../../shared/conformance");
    if shared.is_dir() {
        let shared = shared.canonicalize().unwrap_or(shared);
        return (shared, "the shared set next to the workspace");
    }
    (manifest.join("conformance"), "the copy in the testkit")
}

/// The directory the vectors are read from (see the module docs).
pub fn dir() -> &'static Path {
    &located().0
}

/// The path of a vector file in [`dir`] (`metrics.txt`, `records.json`, …).
pub fn path(name: &str) -> PathBuf {
    dir().join(name)
}

/// The text of a vector file in [`dir`].
///
/// # Panics
/// When the file cannot be read.
pub fn text(name: &str) -> String {
    let path = path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One case of a vector file, every field kept as raw JSON text.
#[derive(Debug)]
pub struct Case {
    /// The file it came from.
    pub file: PathBuf,
    /// Its `name`.
    pub name: String,
    fields: BTreeMap<String, Box<RawValue>>,
}

impl Case {
    /// A field as raw JSON text (numbers exactly as written).
    pub fn raw(&self, field: &str) -> Option<&RawValue> {
        self.fields.get(field).map(AsRef::as_ref)
    }

    /// The raw JSON text at a path of object fields (`["get", "record", "result"]`).
    pub fn raw_at(&self, path: &[&str]) -> Option<Box<RawValue>> {
        let (first, rest) = path.split_first()?;
        let mut current = self.raw(first)?.to_owned();
        for field in rest {
            let mut map: BTreeMap<String, Box<RawValue>> =
                serde_json::from_str(current.get()).ok()?;
            current = map.remove(*field)?;
        }
        Some(current)
    }

    /// A string field.
    pub fn str(&self, field: &str) -> Option<String> {
        self.raw(field)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    }

    /// A field as a [`Value`], for strings, booleans, structure. Integers beyond 64 bits
    /// become floats there: read numbers with [`Case::raw`] / [`Case::raw_at`].
    ///
    /// # Panics
    /// Never for a field read from a JSON file.
    pub fn value(&self, field: &str) -> Value {
        self.raw(field).map_or(Value::Null, |r| {
            serde_json::from_str(r.get()).expect("a field of a JSON file is JSON")
        })
    }
}

impl Case {
    /// The whole case as a [`Value`] (lossy for numbers, as [`Case::value`]).
    pub fn as_value(&self) -> Value {
        Value::Object(
            self.fields
                .keys()
                .map(|k| (k.clone(), self.value(k)))
                .collect(),
        )
    }
}

/// What [`cases`] read: the cases and the files they came from.
#[derive(Debug)]
pub struct Loaded {
    /// Every case of the kind, file by file (in file-name order), in file order.
    pub cases: Vec<Case>,
    /// The files read.
    pub files: Vec<PathBuf>,
}

/// The kind of a `.json` vector file: by name, else by its cases' fields.
fn kind_of(path: &Path, cases: &[BTreeMap<String, Box<RawValue>>]) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    Kind::ALL
        .into_iter()
        .find(|k| name.starts_with(k.file_prefix()))
        .or_else(|| {
            Kind::ALL.into_iter().find(|k| {
                !cases.is_empty()
                    && cases
                        .iter()
                        .all(|c| k.fields().iter().all(|f| c.contains_key(*f)))
            })
        })
}

/// Every `.json` file of `dir` with its kind (`None`: no known kind), by file name.
///
/// # Panics
/// When the directory or a file cannot be read, or a file is not a JSON array of objects.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Option<Kind>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let kind = kind_of(&path, &read_cases(&path));
            (path, kind)
        })
        .collect()
}

fn read_cases(path: &Path) -> Vec<BTreeMap<String, Box<RawValue>>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{}: not a JSON array of cases (objects): {e}",
            path.display()
        )
    })
}

/// Every case of `kind` in [`dir`].
///
/// # Panics
/// When a file cannot be read or parsed, a case has no `name`, or no file of the kind
/// exists.
pub fn cases(kind: Kind) -> Loaded {
    cases_in(dir(), kind)
}

/// Every case of `kind` in `dir` (see [`cases`]).
///
/// # Panics
/// As [`cases`].
pub fn cases_in(dir: &Path, kind: Kind) -> Loaded {
    let mut loaded = Loaded {
        cases: Vec::new(),
        files: Vec::new(),
    };
    for (path, found) in files_in(dir) {
        match found {
            Some(k) if k == kind => {}
            Some(_) => continue,
            None => {
                eprintln!(
                    "conformance vectors: {} is of no known kind, not read",
                    path.display()
                );
                continue;
            }
        }
        for fields in read_cases(&path) {
            let name = fields
                .get("name")
                .and_then(|n| serde_json::from_str::<String>(n.get()).ok())
                .unwrap_or_else(|| panic!("{}: a case without a name", path.display()));
            loaded.cases.push(Case {
                file: path.clone(),
                name,
                fields,
            });
        }
        loaded.files.push(path);
    }
    assert!(
        !loaded.files.is_empty(),
        "no {kind:?} vectors in {}",
        dir.display()
    );
    eprintln!(
        "conformance vectors: {} {kind:?} cases from {} file(s) in {}",
        loaded.cases.len(),
        loaded.files.len(),
        dir.display()
    );
    loaded
}
