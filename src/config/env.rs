//! Environment overrides: `REGISTRY_*` as the reference registry reads them, `RINGCACHE_*`
//! for ringcache's own keys.

use serde_json::{Map, Value};

use super::schema::{join, rule, Rule, RINGCACHE_KEYS, RINGCACHE_LISTS};
use super::{err, ConfigError};

/// Whether a variable of this name is a Kubernetes service link or a Docker link
/// (`RINGCACHE_PORT=tcp://...`, `RINGCACHE_SERVICE_HOST`), set by the platform for a service
/// named `ringcache`, not by the operator.
pub(super) fn is_service_link(rest: &str) -> bool {
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_")
}

/// Apply one environment variable, as the reference registry does: `REGISTRY_PROXY_REMOTEURL`
/// sets `proxy.remoteurl` (names split on `_`, lowercased); `RINGCACHE_STORAGE_SIZE_MAX` sets
/// `ringcache.storage.size_max`. The value is read as YAML (so `5`, `true`, `[a]` keep their
/// types); a list key also takes `a,b`. Returns the path set, if any.
///
/// Other variables are ignored. A `REGISTRY_*` that names no key of the reference schema is
/// ignored with a note, as the reference does (a platform may set `REGISTRY_PORT` for a
/// service named `registry`); one that names a refused section is refused like the file's. An
/// unknown `RINGCACHE_*` is an error.
pub(super) fn apply_env(
    tree: &mut Value,
    name: &str,
    value: &str,
    notes: &mut Vec<String>,
) -> Result<Option<String>, ConfigError> {
    let mut list = false;
    let path: Vec<String> = if let Some(rest) = name.strip_prefix("REGISTRY_") {
        let path: Vec<String> = rest.split('_').map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) || !env_path_known(&path) {
            notes.push(format!(
                "{name} is ignored: it names no key of the reference registry's configuration"
            ));
            return Ok(None);
        }
        path
    } else if let Some(rest) = name.strip_prefix("RINGCACHE_") {
        // Read by the failpoints of test builds, not settings.
        if rest == "FAILPOINTS" || rest == "WALL_OFFSET_SECS" || is_service_link(rest) {
            return Ok(None);
        }
        let want = rest.to_ascii_lowercase();
        if let Some(entry) = want.strip_prefix("upstreams_") {
            let path = upstream_entry_path(tree, name, entry)?;
            list = path.last().is_some_and(|k| k == "token_realms");
            path
        } else {
            match RINGCACHE_KEYS.iter().find(|k| k.replace('.', "_") == want) {
                Some(k) => {
                    list = RINGCACHE_LISTS.contains(k);
                    std::iter::once("ringcache".to_string())
                        .chain(k.split('.').map(String::from))
                        .collect()
                }
                None => return Err(err(name, "no such ringcache setting")),
            }
        }
    } else {
        return Ok(None);
    };
    let parsed: Value =
        serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    let parsed = match parsed {
        Value::Null => Value::String(value.to_string()),
        Value::String(s) if list => Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        v => v,
    };
    let mut cur = tree;
    let Some((last, parents)) = path.split_last() else {
        return Ok(None);
    };
    for part in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else {
            unreachable!("made an object above")
        };
        cur = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Value::Object(map) = cur {
        map.insert(last.clone(), parsed);
    }
    Ok(Some(path.join(".")))
}

/// `RINGCACHE_UPSTREAMS_<REGISTRY>_<KEY>` (lowercased here): a key of an entry of
/// `ringcache.upstreams` that the file lists, the registry name written with `_` for every
/// character that is not a letter or digit (`GHCR_IO`, `HARBOR_CORP_5000`). Only entries the
/// file has: a variable cannot add an upstream (its remote URL would be missing anyway).
fn upstream_entry_path(tree: &Value, var: &str, entry: &str) -> Result<Vec<String>, ConfigError> {
    let norm = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let listed = tree
        .get("ringcache")
        .and_then(|r| r.get("upstreams"))
        .and_then(Value::as_object);
    let keys = super::yaml::UPSTREAM_ENTRY_KEYS.iter().map(|k| {
        if *k == "tags" {
            "tags_fresh_for"
        } else {
            k
        }
    });
    let mut found: Vec<Vec<String>> = Vec::new();
    for registry in listed.into_iter().flat_map(|m| m.keys()) {
        let Some(field) = entry
            .strip_prefix(&norm(registry))
            .and_then(|r| r.strip_prefix('_'))
        else {
            continue;
        };
        if let Some(k) = keys.clone().find(|k| *k == field) {
            let mut path = vec!["ringcache".into(), "upstreams".into(), registry.clone()];
            match k {
                "tags_fresh_for" => path.extend(["tags".into(), "fresh_for".into()]),
                k => path.push(k.into()),
            }
            found.push(path);
        }
    }
    // `a-b.io` and `a.b.io` are both `A_B_IO`: a secret meant for one must not go to the
    // other, so a name that fits two entries is refused.
    match found.len() {
        1 => return Ok(found.remove(0)),
        0 => {}
        _ => {
            let names: Vec<&str> = found.iter().map(|p| p[2].as_str()).collect();
            return Err(err(
                var,
                format!(
                    "fits more than one entry of ringcache.upstreams ({}); set it in the file",
                    names.join(", ")
                ),
            ));
        }
    }
    Err(err(
        var,
        "names no key of an entry of ringcache.upstreams in the config file (RINGCACHE_UPSTREAMS_<REGISTRY>_<KEY>, e.g. RINGCACHE_UPSTREAMS_GHCR_IO_PASSWORD)",
    ))
}

/// Whether a `REGISTRY_*` path names something in the schema: a key ringcache reads, or a
/// noted or refused section (anything below those).
pub(super) fn env_path_known(path: &[String]) -> bool {
    let mut key = String::new();
    for (i, part) in path.iter().enumerate() {
        key = join(&key, part);
        let last = i + 1 == path.len();
        match rule(&key) {
            Some(Rule::Section) => {}
            Some(Rule::Read) => return last,
            Some(Rule::Note(_) | Rule::Refuse(_)) => return true,
            None => return false,
        }
    }
    true
}
