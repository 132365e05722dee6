//! The web client, embedded in the binary at build time.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

/// Embedded files: name, content type and bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../assets/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../assets/style.css")),
];

/// Whether an embedded file has this name.
pub fn exists(name: &str) -> bool {
    FILES.iter().any(|(file, _, _)| *file == name)
}

/// A response with the embedded file `name`, which must exist.
///
/// The files are revalidated on every load (`no-cache`) because their names
/// carry no content hash yet, so a new release reaches browsers at once.
pub fn response(name: &str) -> Response<Full<Bytes>> {
    let (_, content_type, bytes) = FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .expect("callers check that the asset exists");
    let mut response = Response::new(Full::new(Bytes::from_static(bytes)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
