//! The web client, embedded in the binary at build time and served under
//! content-hashed names.
//!
//! At first use the server names every script and style sheet
//! `<stem>.<hash>.<ext>`, where the hash is over the bytes it serves, and
//! rewrites the references in index.html and the `import` specifiers in the
//! scripts to those names. A script's bytes include the hashed names of
//! the modules it imports, so a change to one module renames it and every
//! module that imports it, directly or not. Hashed files never change, so
//! browsers may cache them for a year. index.html is revalidated on every
//! load, so a new release reaches browsers at once.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use sha2::{Digest, Sha256};

/// Embedded files: name, content type and bytes. index.html references the
/// others as `"/<name>"`, and scripts import each other as `'./<name>'`.
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../assets/index.html")),
    ("style.css", CSS, include_bytes!("../assets/style.css")),
    ("favicon.svg", SVG, include_bytes!("../assets/favicon.svg")),
    ("app.js", JS, include_bytes!("../assets/app.js")),
    ("admin.js", JS, include_bytes!("../assets/admin.js")),
    ("api.js", JS, include_bytes!("../assets/api.js")),
    ("auth.js", JS, include_bytes!("../assets/auth.js")),
    ("composer.js", JS, include_bytes!("../assets/composer.js")),
    ("connection.js", JS, include_bytes!("../assets/connection.js")),
    ("dialogs.js", JS, include_bytes!("../assets/dialogs.js")),
    ("dom.js", JS, include_bytes!("../assets/dom.js")),
    ("messages.js", JS, include_bytes!("../assets/messages.js")),
    ("model.js", JS, include_bytes!("../assets/model.js")),
    ("outbox.js", JS, include_bytes!("../assets/outbox.js")),
    ("presence.js", JS, include_bytes!("../assets/presence.js")),
    ("render.js", JS, include_bytes!("../assets/render.js")),
    ("richtext.js", JS, include_bytes!("../assets/richtext.js")),
    ("sidebar.js", JS, include_bytes!("../assets/sidebar.js")),
    ("state.js", JS, include_bytes!("../assets/state.js")),
    ("storage.js", JS, include_bytes!("../assets/storage.js")),
    ("util.js", JS, include_bytes!("../assets/util.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Cache policy of the hashed files, whose content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Hex digits of SHA-256 kept in a hashed name.
const HASH_HEX_DIGITS: usize = 12;

/// The embedded files as served.
struct Assets {
    /// index.html with hashed references.
    index: Bytes,
    /// Hashed name to content type and bytes.
    files: HashMap<String, (&'static str, Bytes)>,
}

static ASSETS: OnceLock<Assets> = OnceLock::new();

fn assets() -> &'static Assets {
    ASSETS.get_or_init(build)
}

/// Returns the served name of the embedded file `name`, such as `app.1a2b3c4d5e6f.js`.
pub fn hashed_name(name: &str) -> Option<String> {
    assets()
        .files
        .keys()
        .find(|hashed| original_name(hashed) == name)
        .cloned()
}

/// Builds the response with index.html, revalidated on every load (`no-cache`).
pub fn index_response() -> Response<Full<Bytes>> {
    build_response(HTML, assets().index.clone(), "no-cache")
}

/// Builds the response with the hashed file `name`, or None when no file has that name.
pub fn response(name: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, bytes) = assets().files.get(name)?;
    Some(build_response(content_type, bytes.clone(), IMMUTABLE))
}

fn build_response(content_type: &'static str, bytes: Bytes, cache_control: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}

/// Hashes every file and rewrites the references between them.
fn build() -> Assets {
    let mut served: HashMap<&'static str, (String, Vec<u8>)> = HashMap::new();
    for (name, _, _) in FILES.iter().filter(|(name, _, _)| *name != "index.html") {
        resolve(name, &mut served, &mut Vec::new());
    }

    let mut index = source("index.html").to_vec();
    for (name, (hashed, _)) in &served {
        index = replace_all(&index, format!("\"/{name}\"").as_bytes(), format!("\"/{hashed}\"").as_bytes());
    }

    let files = served
        .into_iter()
        .map(|(name, (hashed, bytes))| (hashed, (content_type(name), Bytes::from(bytes))))
        .collect();
    Assets {
        index: Bytes::from(index),
        files,
    }
}

/// Computes the served name and bytes of `name` after those of the scripts
/// it imports. `path` is the chain of imports being resolved, to report a cycle.
fn resolve(name: &'static str, served: &mut HashMap<&'static str, (String, Vec<u8>)>, path: &mut Vec<&'static str>) {
    if served.contains_key(name) {
        return;
    }
    if path.contains(&name) {
        path.push(name);
        panic!("embedded scripts import each other in a cycle: {}", path.join(" -> "));
    }
    path.push(name);
    let mut bytes = source(name).to_vec();
    if name.ends_with(".js") {
        for dependency in imports(name) {
            resolve(dependency, served, path);
            let hashed = &served[dependency].0;
            bytes = replace_all(&bytes, format!("'./{dependency}'").as_bytes(), format!("'./{hashed}'").as_bytes());
        }
    }
    path.pop();
    served.insert(name, (hashed_file_name(name, &bytes), bytes));
}

/// Lists the embedded scripts that `name` references as `'./<script>'`.
fn imports(name: &str) -> Vec<&'static str> {
    let text = source(name);
    FILES
        .iter()
        .map(|(file, _, _)| *file)
        .filter(|file| file.ends_with(".js") && *file != name)
        .filter(|file| contains(text, format!("'./{file}'").as_bytes()))
        .collect()
}

fn hashed_file_name(name: &str, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let (stem, extension) = name.rsplit_once('.').expect("embedded file names have an extension");
    format!("{stem}.{}.{extension}", &hex[..HASH_HEX_DIGITS])
}

/// `app.1a2b3c4d5e6f.js` to `app.js`.
fn original_name(hashed: &str) -> String {
    let mut parts: Vec<&str> = hashed.split('.').collect();
    if parts.len() >= 3 {
        parts.remove(parts.len() - 2);
    }
    parts.join(".")
}

fn source(name: &str) -> &'static [u8] {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, _, bytes)| *bytes)
        .expect("the name comes from FILES")
}

fn content_type(name: &str) -> &'static str {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, _)| *content_type)
        .expect("the name comes from FILES")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn replace_all(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(position) = rest.windows(needle.len()).position(|window| window == needle) {
        output.extend_from_slice(&rest[..position]);
        output.extend_from_slice(replacement);
        rest = &rest[position + needle.len()..];
    }
    output.extend_from_slice(rest);
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative module specifiers in a script: `from './x.js'` and `import './x.js'`.
    fn specifiers(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["from './", "import './", "import('./"] {
            for (start, _) in text.match_indices(marker) {
                let rest = &text[start + marker.len()..];
                if let Some(end) = rest.find('\'') {
                    found.push(rest[..end].to_string());
                }
            }
        }
        found
    }

    #[test]
    fn every_import_is_embedded() {
        for (name, _, bytes) in FILES.iter().filter(|(name, _, _)| name.ends_with(".js")) {
            let text = std::str::from_utf8(bytes).unwrap();
            for specifier in specifiers(text) {
                assert!(
                    FILES.iter().any(|(file, _, _)| *file == specifier),
                    "{name} imports ./{specifier}, which is not in FILES"
                );
            }
        }
    }

    #[test]
    fn served_scripts_import_hashed_names() {
        let assets = assets();
        for (hashed, (content_type, bytes)) in &assets.files {
            if *content_type != JS {
                continue;
            }
            let text = std::str::from_utf8(bytes).unwrap();
            for specifier in specifiers(text) {
                assert!(
                    assets.files.contains_key(&specifier),
                    "{hashed} imports ./{specifier}, which is not served"
                );
            }
        }
    }

    #[test]
    fn index_references_hashed_names() {
        let index = std::str::from_utf8(&assets().index).unwrap();
        for (name, _, _) in FILES.iter().filter(|(name, _, _)| *name != "index.html") {
            let hashed = hashed_name(name).expect("every file has a hashed name");
            assert!(!index.contains(&format!("\"/{name}\"")), "index.html still references /{name}");
            if *name == "app.js" || *name == "style.css" {
                assert!(index.contains(&format!("\"/{hashed}\"")), "index.html references /{hashed}");
            }
        }
    }

    #[test]
    fn hash_changes_with_dependency() {
        let first = hashed_file_name("a.js", b"import { x } from './b.1.js';");
        let second = hashed_file_name("a.js", b"import { x } from './b.2.js';");
        assert_ne!(first, second, "a changed import changes the importer's name");
        assert_eq!(original_name(&first), "a.js", "the hashed name keeps the stem and extension");
    }
}
