//! The web console at `/` (SPEC §3): one page and its script and style sheet, bundled from
//! `collector/console/src` by `collector/console/build.sh` into `collector/console/dist`
//! (committed, and checked against its sources by `build.sh --check` in `scripts/test.sh`)
//! and embedded here, so the binary needs no files beside it and `cargo build` no npm.
//!
//! The page and its assets are public: they hold no data, and a page that loads without
//! credentials can ask for a bearer token, which the browser cannot. The page's calls to
//! `api/v1/...` go through the API's authentication like any client's (`auth.rs`).
//!
//! Caching: the assets keep stable names, so every response carries a strong ETag (CRC-32C
//! and length of the body) and `Cache-Control: no-cache`; a browser revalidates and gets
//! 304 without a body while nothing changed, and a new collector version is never hidden
//! behind a stale cache. No gzip: the whole console is ~75 kB, read over loopback or a
//! port-forward.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::LazyLock;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: &'static [u8],
    /// Its strong entity tag, computed at the first request.
    etag: LazyLock<HeaderValue>,
    /// The page (it carries the Content-Security-Policy).
    page: bool,
}

/// The file `dist/$file` of the console, embedded.
macro_rules! asset {
    ($file:literal, $content_type:literal, page: $page:literal) => {{
        const BODY: &[u8] =
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/dist/", $file));
        Asset {
            content_type: $content_type,
            body: BODY,
            etag: LazyLock::new(|| etag(BODY)),
            page: $page,
        }
    }};
}

static PAGE: Asset = asset!("index.html", "text/html; charset=utf-8", page: true);
static SCRIPT: Asset = asset!("console.js", "text/javascript; charset=utf-8", page: false);
static STYLE: Asset = asset!("console.css", "text/css; charset=utf-8", page: false);

/// What the page may load: only from the collector itself (the script's API calls, its
/// script and style sheet) and `data:` images (the empty favicon). Styles that uPlot and the
/// console set through the CSSOM are not inline styles, so `style-src 'self'` holds.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The console's routes, outside the API's authentication and limits.
pub(super) fn routes() -> Router {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&PAGE, &h) }))
        .route(
            "/static/console.js",
            get(|h: HeaderMap| async move { serve(&SCRIPT, &h) }),
        )
        .route(
            "/static/console.css",
            get(|h: HeaderMap| async move { serve(&STYLE, &h) }),
        )
}

/// The strong entity tag of `body`: its CRC-32C and length, quoted.
fn etag(body: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "\"{:08x}-{:x}\"",
        crc32c::crc32c(body),
        body.len()
    ))
    .expect("quoted hex digits are a header value")
}

/// Whether `If-None-Match` names `tag` (or is `*`); weak tags compare by their opaque part,
/// as RFC 9110 has GET compare them.
fn not_modified(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    let tag = tag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == tag)
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let tag = &*asset.etag;
    let mut resp = if not_modified(request, tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, tag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.page {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = HeaderValue::from_static("\"0000abcd-10\"");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            not_modified(&h, &tag)
        };
        assert!(with("\"0000abcd-10\""));
        assert!(with("\"other\", W/\"0000abcd-10\""));
        assert!(with("*"));
        assert!(!with("\"0000abcd-11\""));
        assert!(!not_modified(&HeaderMap::new(), &tag));
    }

    #[test]
    fn the_page_refers_to_its_assets_by_relative_urls() {
        let page = std::str::from_utf8(PAGE.body).unwrap();
        for asset in ["static/console.js", "static/console.css"] {
            assert!(page.contains(&format!("\"{asset}\"")), "{asset} in {page}");
        }
        for absolute in ["=\"/", "=\"http:", "=\"https:", "=\"//"] {
            assert!(!page.contains(absolute), "{absolute} in {page}");
        }
    }
}
