//! The API server's rules for object names. The API source never delivers a name that breaks
//! them, so the rest of sluice may rely on names being plain DNS-style text; the manifest
//! directory has no API server in front of it, so the same rules are checked here.

/// Which rule a name must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// Namespaces: lowercase letters, digits and `-`, at most 63, alphanumeric at both ends.
    Dns1123Label,
    /// Service names: a DNS-1123 label that starts with a letter.
    Dns1035Label,
    /// Most other names: DNS-1123 labels joined by `.`, at most 253.
    Dns1123Subdomain,
}

impl NameRule {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            NameRule::Dns1123Label => {
                "DNS-1123 label (lowercase letters, digits and '-', at most 63 characters, \
                 starting and ending with a letter or digit)"
            }
            NameRule::Dns1035Label => {
                "DNS-1035 label (lowercase letters, digits and '-', at most 63 characters, \
                 starting with a letter and ending with a letter or digit)"
            }
            NameRule::Dns1123Subdomain => {
                "DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 \
                 characters, each dot-separated part starting and ending with a letter or digit)"
            }
        }
    }

    pub(crate) fn accepts(self, name: &str) -> bool {
        match self {
            NameRule::Dns1123Label => is_label(name),
            NameRule::Dns1035Label => {
                is_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
            }
            NameRule::Dns1123Subdomain => name.len() <= 253 && name.split('.').all(is_label),
        }
    }
}

fn is_label(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| alnum(c) || c == '-')
        && label.starts_with(alnum)
        && label.ends_with(alnum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_api_server_rules() {
        use NameRule::*;
        for (rule, name, ok) in [
            (Dns1035Label, "web", true),
            (Dns1035Label, "web-2", true),
            (Dns1035Label, "2web", false),
            (Dns1035Label, "Web", false),
            (Dns1035Label, "web.shop", false),
            (Dns1123Label, "2shop", true),
            (Dns1123Label, "shop-", false),
            (Dns1123Label, &"a".repeat(64), false),
            (Dns1123Subdomain, "node-1.example.com", true),
            (Dns1123Subdomain, "node..1", false),
            (Dns1123Subdomain, "web; rm -rf", false),
            (Dns1123Subdomain, "café", false),
            (Dns1123Subdomain, "", false),
        ] {
            assert_eq!(rule.accepts(name), ok, "{rule:?} {name:?}");
        }
    }
}
