//! `metav1.LabelSelector` (matchLabels + matchExpressions) validated once and matched against
//! Service labels.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Synthetic label holding the Service's namespace, so a pool can be limited to namespaces.
pub const SERVICE_NAMESPACE_LABEL: &str = "io.kubernetes.service.namespace";
/// Synthetic label holding the Service's name.
pub const SERVICE_NAME_LABEL: &str = "io.kubernetes.service.name";

/// Why a `serviceSelector` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}] (key {key:?}): unknown operator {operator:?}")]
    UnknownOperator {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] (key {key:?}): operator {operator} needs values")]
    MissingValues {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] (key {key:?}): operator {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A validated label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<(String, Operator)>,
}

impl Selector {
    /// Validates a selector; `None` (no selector) matches every Service.
    pub fn parse(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(selector) = selector else {
            return Ok(Self::default());
        };
        let mut requirements: Vec<(String, Operator)> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), Operator::In(BTreeSet::from([value.clone()]))))
            .collect();
        for (index, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let operator = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => Err(SelectorError::MissingValues {
                    index,
                    key: expr.key.clone(),
                    operator: expr.operator.clone(),
                }),
                "In" => Ok(Operator::In(values)),
                "NotIn" => Ok(Operator::NotIn(values)),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    Err(SelectorError::UnexpectedValues {
                        index,
                        key: expr.key.clone(),
                        operator: expr.operator.clone(),
                    })
                }
                "Exists" => Ok(Operator::Exists),
                "DoesNotExist" => Ok(Operator::DoesNotExist),
                other => Err(SelectorError::UnknownOperator {
                    index,
                    key: expr.key.clone(),
                    operator: other.to_string(),
                }),
            }?;
            requirements.push((expr.key.clone(), operator));
        }
        Ok(Self { requirements })
    }

    /// Whether a Service with these labels, namespace and name is selected. The synthetic
    /// labels [`SERVICE_NAMESPACE_LABEL`] and [`SERVICE_NAME_LABEL`] always hold the Service's
    /// own namespace and name.
    pub fn matches(&self, labels: &BTreeMap<String, String>, namespace: &str, name: &str) -> bool {
        let lookup = |key: &str| match key {
            SERVICE_NAMESPACE_LABEL => Some(namespace),
            SERVICE_NAME_LABEL => Some(name),
            _ => labels.get(key).map(String::as_str),
        };
        self.requirements
            .iter()
            .all(|(key, operator)| match (operator, lookup(key)) {
                (Operator::In(values), Some(value)) => values.contains(value),
                (Operator::In(_), None) => false,
                (Operator::NotIn(values), Some(value)) => !values.contains(value),
                (Operator::NotIn(_), None) => true,
                (Operator::Exists, found) => found.is_some(),
                (Operator::DoesNotExist, found) => found.is_none(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn absent_and_empty_selectors_match_everything() {
        let none = Selector::parse(None).unwrap();
        let empty = Selector::parse(Some(&LabelSelector::default())).unwrap();
        for s in [none, empty] {
            assert!(s.matches(&labels(&[]), "ns", "svc"));
        }
    }

    #[test]
    fn match_labels_and_expressions_all_apply() {
        let s = Selector::parse(Some(&selector(
            &[("tier", "web")],
            vec![
                expr("env", "In", &["prod", "staging"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("team", "NotIn", &["blue"]),
                expr("app", "Exists", &[]),
            ],
        )))
        .unwrap();
        let good = labels(&[("tier", "web"), ("env", "prod"), ("app", "x")]);
        assert!(s.matches(&good, "ns", "svc"));
        for (key, value) in [
            ("tier", "db"),
            ("env", "dev"),
            ("legacy", "1"),
            ("team", "blue"),
        ] {
            let mut bad = good.clone();
            bad.insert(key.into(), value.into());
            assert!(
                !s.matches(&bad, "ns", "svc"),
                "{key}={value} must not match"
            );
        }
        let mut no_app = good.clone();
        no_app.remove("app");
        assert!(!s.matches(&no_app, "ns", "svc"));
    }

    #[test]
    fn synthetic_namespace_and_name_labels_cannot_be_spoofed() {
        let s = Selector::parse(Some(&selector(
            &[(SERVICE_NAMESPACE_LABEL, "team-a")],
            vec![],
        )))
        .unwrap();
        assert!(s.matches(&labels(&[]), "team-a", "svc"));
        let spoof = labels(&[(SERVICE_NAMESPACE_LABEL, "team-a")]);
        assert!(!s.matches(&spoof, "team-b", "svc"));
    }

    #[test]
    fn malformed_expressions_are_named() {
        let cases = [
            (expr("env", "Equals", &["x"]), "unknown operator \"Equals\""),
            (expr("env", "In", &[]), "operator In needs values"),
            (
                expr("env", "Exists", &["x"]),
                "operator Exists takes no values",
            ),
        ];
        for (e, want) in cases {
            let err = Selector::parse(Some(&selector(&[], vec![e]))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(want) && text.contains("key \"env\""),
                "{text}"
            );
        }
    }
}
