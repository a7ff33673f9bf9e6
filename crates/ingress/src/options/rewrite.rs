//! `rewrite-target`: nginx's `rewrite "(?i)<path>" <target> break;` — the whole request path
//! is replaced by the target, `$1`..`$9` standing for the groups of the route's regex, and the
//! original query is kept (after the target's own, joined by `&`).

use regex::Regex;

#[derive(Debug)]
pub(crate) struct Rewrite {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Group(usize),
}

impl Rewrite {
    /// `$N` (one digit) is a group; everything else is literal.
    pub(crate) fn parse(target: &str) -> Self {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = target.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('$', Some(n)) => {
                    chars.next();
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Group(n as usize));
                }
                _ => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Self { parts }
    }

    /// The path and query sent upstream for `path` (normalised) and the client's `query`.
    pub(crate) fn apply(&self, regex: Option<&Regex>, path: &str, query: Option<&str>) -> String {
        let captures = regex.and_then(|re| re.captures(path));
        let mut out = String::with_capacity(path.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Group(n) => {
                    let group = captures.as_ref().and_then(|c| c.get(*n));
                    out.push_str(group.map_or("", |m| m.as_str()));
                }
            }
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        match query.filter(|q| !q.is_empty()) {
            Some(q) if out.contains('?') => format!("{out}&{q}"),
            Some(q) => format!("{out}?{q}"),
            None => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_replace_and_the_query_is_kept() {
        let re = Regex::new("(?i)^/something(/|$)(.*)").unwrap();
        let r = Rewrite::parse("/$2");
        assert_eq!(
            r.apply(Some(&re), "/something/new", Some("a=1")),
            "/new?a=1"
        );
        assert_eq!(r.apply(Some(&re), "/something", None), "/");
        assert_eq!(r.apply(Some(&re), "/SOMETHING/x/y", None), "/x/y");
        let fixed = Rewrite::parse("/");
        assert_eq!(fixed.apply(Some(&re), "/something/deep/path", None), "/");
        let with_query = Rewrite::parse("/v2/$2?from=old");
        assert_eq!(
            with_query.apply(Some(&re), "/something/x", Some("q=1")),
            "/v2/x?from=old&q=1"
        );
        // `$12` is group 1 then "2", as nginx reads it; a lone `$` stays.
        let literal = Rewrite::parse("/a$12$");
        assert_eq!(literal.apply(Some(&re), "/something/x", None), "/a/2$");
    }
}
