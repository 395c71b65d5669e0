//! The pages' frame: escaping, the style sheet (inline: nothing is fetched from
//! elsewhere), and the headers every answer carries (no script may run, no other site
//! may frame the page or post its forms, nothing is cached).

use std::borrow::Cow;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

/// `text` with `& < > " '` escaped, for an element's text or a quoted attribute.
pub fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// No script, no plugin, no frame, forms only to this origin; styles and images
/// only inline.
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                      form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML answer with the console's headers.
pub fn page(status: StatusCode, body: String) -> Response {
    let headers = [
        (CONTENT_TYPE, "text/html; charset=utf-8"),
        (CACHE_CONTROL, "no-store"),
        (HeaderName::from_static("content-security-policy"), POLICY),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("referrer-policy"), "same-origin"),
    ];
    (status, headers, body).into_response()
}

/// The document around `main`, titled `title`.
pub fn document(title: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · couponsd</title><style>{STYLE}</style></head>\
         <body>{main}</body></html>\n",
        esc(title)
    )
}

/// A page that says one thing (an action's outcome, an error), with a way back.
pub fn message(title: &str, text: &str, output: Option<&str>) -> String {
    let output = output
        .map(|o| format!("<pre class=\"output\">{}</pre>", esc(o)))
        .unwrap_or_default();
    document(
        title,
        &format!(
            "<header><h1><a href=\"/\">couponsd</a> · {}</h1></header><main>\
             <p class=\"message\">{}</p>{output}<p><a href=\"/\">Back to the console</a></p></main>",
            esc(title),
            esc(text)
        ),
    )
}

const STYLE: &str = "
:root{--fg:#1d2430;--muted:#5b6576;--line:#d9dee7;--bg:#f6f7f9;--card:#fff;--accent:#2f6fde;
--bad:#c0392b;--warn:#b9770e;--good:#1e8449}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header a{color:#fff;text-decoration:none}
header nav a{color:#c9d4e8;margin-right:14px}header .meta{color:#c9d4e8;font-size:12px;margin-left:auto}
main{padding:16px 20px;max-width:1400px}
h2{font-size:16px;margin:22px 0 8px}
section.card,div.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 14px;margin:0 0 12px}
.campaign h3{margin:0 0 6px;font-size:15px}.campaign h3 small{color:var(--muted);font-weight:normal}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:middle}
th{font-size:12px;color:var(--muted);font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;border:1px solid currentColor}
.s-active{color:var(--good)}.s-retired,.s-expired{color:var(--muted)}.s-removed{color:var(--bad)}
.bad{color:var(--bad)}.warn{color:var(--warn)}.muted{color:var(--muted)}
svg.burn{display:block;background:#fbfcfe;border:1px solid var(--line);border-radius:4px}
svg.burn path.remaining{fill:none;stroke:var(--accent);stroke-width:1.5}
svg.burn path.area{fill:#2f6fde22;stroke:none}
svg.burn line.rotation{stroke:var(--bad);stroke-width:1;stroke-dasharray:3 2}
svg.burn line.axis{stroke:#aab3c2;stroke-width:1}svg.burn text{font-size:10px;fill:var(--muted)}
form.action{margin:8px 0}form.action fieldset{display:flex;gap:8px;align-items:end;flex-wrap:wrap;border:0;padding:0;margin:0}
form.action label{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
form.action input,form.action select{font:inherit;padding:3px 6px;border:1px solid var(--line);border-radius:4px}
form.action button{font:inherit;padding:4px 12px;border-radius:4px;border:1px solid var(--accent);background:var(--accent);color:#fff}
form.action button[disabled]{background:#aab3c2;border-color:#aab3c2}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
pre.output{background:#fff;border:1px solid var(--line);padding:8px;overflow:auto}
p.message{font-size:15px}
";
