//! The files the admin endpoint serves to browsers, built into the binary: the live dashboard
//! at `/` (clients/dashboard/, with its vendored charting library) and the JavaScript client
//! at `/corecast.js` (which imports `/corecast-status.js`, the `<corecast-status>` element)
//! with its TypeScript declarations (clients/js/). They are static and
//! open even with `server.admin_key` set: they hold no figures, which flow only over the
//! WebSocket (the reserved `_sys.stats` topic), where the key is asked for. docs/clients.md,
//! docs/operations.md ("The dashboard").

/// One file: its path, media type and bytes.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// Pages of any origin may load it (`Access-Control-Allow-Origin: *`): the client library.
    pub shared: bool,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file served, by path.
pub const ASSETS: [Asset; 8] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../clients/dashboard/index.html"),
        shared: false,
    },
    Asset {
        path: "/dashboard.js",
        content_type: JS,
        body: include_bytes!("../../clients/dashboard/dashboard.js"),
        shared: false,
    },
    Asset {
        path: "/dashboard.css",
        content_type: CSS,
        body: include_bytes!("../../clients/dashboard/dashboard.css"),
        shared: false,
    },
    Asset {
        path: "/vendor/uplot.js",
        content_type: JS,
        body: include_bytes!("../../clients/dashboard/vendor/uplot.js"),
        shared: false,
    },
    Asset {
        path: "/vendor/uplot.css",
        content_type: CSS,
        body: include_bytes!("../../clients/dashboard/vendor/uplot.css"),
        shared: false,
    },
    Asset {
        path: "/corecast.js",
        content_type: JS,
        body: include_bytes!("../../clients/js/corecast.js"),
        shared: true,
    },
    Asset {
        path: "/corecast-status.js",
        content_type: JS,
        body: include_bytes!("../../clients/js/corecast-status.js"),
        shared: true,
    },
    Asset {
        path: "/corecast.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_bytes!("../../clients/js/corecast.d.ts"),
        shared: true,
    },
];

/// The file at `path`, if one is served there (`/index.html` is `/`).
pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// The page's rules for the browser: scripts and styles from this origin only (the status
/// element's styles are a constructable stylesheet and uPlot sets styles through the CSSOM,
/// neither of which `style-src` governs: no inline `<style>` or `style=` is needed), WebSocket
/// connections anywhere (the client port is another origin), and no framing (the key form
/// cannot be clickjacked). The browser tests fail on any violation it reports.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
