//! Checking the endpoint URL up front, so that a typo is an error at start-up, not a week of
//! refused uploads.

/// Paths of the contract's routes (SPEC §2, §3, §8): an endpoint ending in one of them is a
/// route, not the server's base URL.
const ROUTES: [&str; 6] = [
    "/track/batch",
    "/track",
    "/healthz",
    "/metrics",
    "/api/events",
    "/api/sessions",
];

/// Checks that `endpoint` is a server's base URL: `http` or `https`, a host, no spaces around
/// it, no user name or password (they would not be sent), no query or fragment, and a path that is not one of the contract's routes (a prefix a
/// reverse proxy serves the server under is fine). The error says what to fix.
pub fn check(endpoint: &str) -> Result<(), String> {
    if endpoint.trim() != endpoint {
        return Err(format!(
            "the endpoint {endpoint:?} has spaces around it; remove them"
        ));
    }
    let url = url::Url::parse(endpoint).map_err(|e| {
        format!(
            "the endpoint {endpoint:?} is not a URL ({e}); give e.g. https://ingest.example.com"
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // The credentials are not repeated in the message (it lands in logs).
        return Err(format!(
            "the endpoint \"{}://…@{}\" holds a user name or password; requests are signed \
             with the client id and secret, not URL credentials: remove them from the URL",
            url.scheme(),
            url.host_str().unwrap_or_default()
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the endpoint {endpoint:?} must start with http:// or https://"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the endpoint {endpoint:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the endpoint {endpoint:?} must not carry a query or fragment"
        ));
    }
    let path = url.path().trim_end_matches('/');
    if let Some(route) = ROUTES.iter().find(|r| path.ends_with(*r)) {
        return Err(format!(
            "the endpoint {endpoint:?} ends with the route {route}; give the server's base URL \
             (e.g. {}://{}), the SDK adds the routes",
            url.scheme(),
            url.host_str().unwrap_or_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_pass_and_mistakes_are_named() {
        for ok in [
            "https://ingest.example.com",
            "http://127.0.0.1:8080/",
            "https://example.com/backfill",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("http://127.0.0.1:8080 ", "spaces"),
            (" http://127.0.0.1:8080", "spaces"),
            ("127.0.0.1:8080", "http"),
            ("ingest.example.com", "not a URL"),
            ("ftp://example.com", "http://"),
            ("http://127.0.0.1:8080/track/batch", "/track/batch"),
            ("http://127.0.0.1:8080/track/", "/track"),
            ("https://example.com/?key=1", "query"),
            (
                "https://gw:s3cret@ingest.example.com",
                "user name or password",
            ),
            ("https://gw@ingest.example.com", "user name or password"),
            // Host names are read as ASCII; an internationalised one goes in its xn-- form.
            ("https://bücher.example", "not a URL"),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
            assert!(
                !err.contains("s3cret"),
                "{bad}: the password is not repeated: {err}"
            );
        }
    }
}
