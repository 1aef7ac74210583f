//! Reading the portal's pages in tests: the problem beside a field, and text typed as markup
//! shown escaped.

/// The typed `<script>alert(1)</script>` is on the page as text, never as markup.
pub fn is_escaped_script(body: &str) -> bool {
    let escaped =
        body.contains("&lt;script&gt;alert(1)") || body.contains("&#60;script&#62;alert(1)");
    escaped && !body.contains("<script>alert")
}

/// The problem shown beside `field`.
pub fn field_error<'a>(body: &'a str, field: &str) -> &'a str {
    let marker = format!("id=\"{field}-error\">");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no error beside {field}: {body}"))
        + marker.len();
    &body[at..at + body[at..].find("</p>").unwrap()]
}
