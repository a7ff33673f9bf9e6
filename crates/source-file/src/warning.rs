//! What the source reports about input it skips: always the file, the document and, when the
//! problem is about one object, its kind and namespace/name.

use std::fmt;

/// A problem with one file, one document or one object. The affected part is skipped; the rest
/// of the directory still applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    /// File name inside the manifest directory (the symlink's name for a symlinked file).
    pub file: String,
    /// 1-based index of the YAML document in the file (0 when the whole file is affected).
    pub document: usize,
    /// 1-based index inside a `kind: List` document, when the object is a list item.
    pub item: Option<usize>,
    /// The object the problem is about, as far as it could be read.
    pub object: Option<ObjectRef>,
    pub problem: Problem,
}

/// `Service shop/web`: an object as named in a warning. Fields are what the manifest says, so a
/// misspelled kind is shown as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    /// `None` for cluster-scoped kinds and for namespaced ones that could not be read this far.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Why something was skipped. Messages say what to change where that is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error(
        "file is {size} bytes, more than the limit of {limit} bytes; skipped without reading it"
    )]
    FileTooLarge { size: u64, limit: u64 },
    #[error("not a regular file ({what}); skipped")]
    NotRegularFile { what: &'static str },
    #[error("symlink points to {target:?}, which does not exist")]
    DanglingSymlink { target: String },
    #[error("cannot follow symlink: {reason}")]
    BrokenSymlink { reason: String },
    #[error("cannot read file: {reason}")]
    Unreadable { reason: String },
    #[error("not UTF-8 text: {reason}")]
    NotText { reason: String },
    #[error(
        "nested more than {limit} levels deep (at line {line}); skipped without parsing it \
         (Kubernetes objects need about 20; the limit is DirSource::with_max_depth)"
    )]
    TooDeep { limit: usize, line: usize },
    #[error(
        "has more than {limit} YAML nodes (counting what aliases repeat); skipped (the limit \
         is DirSource::with_max_nodes)"
    )]
    TooManyNodes { limit: usize },
    #[error("not valid YAML: {reason}")]
    InvalidYaml { reason: String },
    #[error("not a Kubernetes object: the document is a {found}, not a mapping")]
    NotAMapping { found: &'static str },
    #[error("no `kind` field: not a Kubernetes object")]
    NoKind,
    #[error("unknown kind {kind:?}: did you mean `{suggestion}`? (kinds are case-sensitive)")]
    MisspelledKind {
        kind: String,
        suggestion: &'static str,
    },
    #[error("`apiVersion: {}` has no kind {kind:?}; sluice reads {ours}", printable(.api_version))]
    UnknownKind {
        kind: String,
        api_version: String,
        ours: &'static str,
    },
    #[error(
        "{} `apiVersion: {}` is not read by sluice; {advice}",
        printable(.kind),
        printable(.api_version)
    )]
    UnsupportedApiVersion {
        kind: String,
        api_version: String,
        advice: &'static str,
    },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error("no metadata.name")]
    MissingName,
    #[error("no metadata.name (metadata.generateName needs an API server to pick the name)")]
    OnlyGenerateName,
    #[error("{field} {value:?} is not a valid {rule}; the API server would reject it")]
    InvalidName {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "ignored: also defined in {winner}, which wins (the last definition in file-name and \
         document order is used)"
    )]
    Duplicate { winner: String },
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&self.file))?;
        if self.document != 0 {
            write!(f, " document {}", self.document)?;
        }
        if let Some(item) = self.item {
            write!(f, " (List item {item})")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", printable(&self.kind))?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {}/{}", printable(ns), printable(name)),
            (None, Some(name)) => write!(f, " {}", printable(name)),
            (Some(ns), None) => write!(f, " {}/(unnamed)", printable(ns)),
            (None, None) => f.write_str(" (unnamed)"),
        }
    }
}

/// Names (and file names, kinds, apiVersions) come from untrusted manifests: anything but
/// plain visible ASCII is shown quoted and escaped, so it cannot forge or break a log line.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        text.into()
    } else {
        format!("{text:?}").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `manifests` fuzz target: an apiVersion with a tab (or a newline, from a
    /// quoted YAML string) was written into the warning as it was.
    #[test]
    fn api_versions_kinds_and_file_names_with_control_characters_are_escaped() {
        let warning = LoadWarning {
            file: "a\nb.yaml".into(),
            document: 1,
            item: None,
            object: None,
            problem: Problem::UnsupportedApiVersion {
                kind: "End\rpointSlice".into(),
                api_version: "discover\t.k8s.io/v1\nINFO forged".into(),
                advice: "write `apiVersion: discovery.k8s.io/v1`",
            },
        };
        assert_eq!(
            warning.to_string(),
            "\"a\\nb.yaml\" document 1: \"End\\rpointSlice\" `apiVersion: \"discover\\t.k8s.io/v1\\nINFO forged\"` is not read by sluice; write `apiVersion: discovery.k8s.io/v1`"
        );
        let unknown = Problem::UnknownKind {
            kind: "X".into(),
            api_version: "v1\nforged".into(),
            ours: "Service",
        };
        assert!(!unknown.to_string().contains('\n'), "{unknown}");
    }

    #[test]
    fn names_with_control_characters_are_escaped_in_messages() {
        let warning = LoadWarning {
            file: "a.yaml".into(),
            document: 2,
            item: None,
            object: Some(ObjectRef {
                kind: "Service".into(),
                namespace: Some("default".into()),
                name: Some("web\nINFO forged".into()),
            }),
            problem: Problem::NoKind,
        };
        let text = warning.to_string();
        assert_eq!(
            text,
            "a.yaml document 2: Service default/\"web\\nINFO forged\": no `kind` field: not a \
             Kubernetes object"
        );
    }
}
