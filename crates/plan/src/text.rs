//! The plan as text people read (`sluice plan`, golden files, `sluice explain`).
//!
//! ```text
//! node node-a
//!   nodeport-addresses 192.0.2.11 2001:db8::11
//!   pod-cidrs 10.244.0.0/16
//!
//! service default/web:http/tcp
//!   cluster 10.244.1.2:8080 10.244.2.2:8080
//!   local 10.244.1.2:8080
//!   affinity 10800s
//!   frontend 10.96.0.10:80/tcp cluster-ip random
//!     pods forward cluster
//!     node forward cluster masquerade
//!     outside forward cluster masquerade
//!
//! health-check 32000 default/web local-endpoints=1
//! ```

use std::fmt::{self, Display, Write as _};

use crate::l4::{FrontendPlan, NodePlan, Plan, Selection, ServicePlan, SourceClass};

/// Items separated by spaces; `-` for none (no trailing blanks in golden files).
fn join<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{item}");
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

impl Display for NodePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.name)?;
        writeln!(f, "  nodeport-addresses {}", join(&self.nodeport_addresses))?;
        writeln!(f, "  pod-cidrs {}", join(&self.pod_cidrs))
    }
}

impl Display for FrontendPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let selection = match self.selection {
            Selection::Random => "random",
            Selection::ConsistentHash => "consistent-hash",
        };
        writeln!(
            f,
            "  frontend {} {} {selection}",
            self.key,
            self.kind.as_str()
        )?;
        if !self.allowed_sources.is_empty() {
            writeln!(f, "    allow {}", join(&self.allowed_sources))?;
        }
        for class in SourceClass::ALL {
            writeln!(f, "    {} {}", class.as_str(), self.route(class))?;
        }
        Ok(())
    }
}

impl Display for ServicePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "service {}", self.name)?;
        writeln!(f, "  cluster {}", join(&self.cluster))?;
        writeln!(f, "  local {}", join(&self.local))?;
        if let Some(timeout) = self.affinity_timeout {
            writeln!(f, "  affinity {timeout}s")?;
        }
        for frontend in &self.frontends {
            write!(f, "{frontend}")?;
        }
        Ok(())
    }
}

impl Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.node)?;
        for service in self.services.values() {
            writeln!(f)?;
            write!(f, "{service}")?;
        }
        if !self.health_checks.is_empty() {
            writeln!(f)?;
        }
        for (port, check) in &self.health_checks {
            writeln!(
                f,
                "health-check {port} {} local-endpoints={}",
                check.service, check.local_endpoints
            )?;
        }
        Ok(())
    }
}

/// The lines that differ between two texts (longest common subsequence): `-` lines of
/// `expected` and `+` lines of `actual`, each with its line number there; empty when equal.
/// For golden files of the text forms, which are small: quadratic is fine.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            // Removed lines first, so a changed line reads `-` old, then `+` new.
            let _ = writeln!(out, "{:>5} - {}", i + 1, a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "{:>5} + {}", j + 1, b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod line_diff_tests {
    use super::line_diff;

    #[test]
    fn diff_shows_changed_added_and_removed_lines() {
        let expected = "service a\n  cluster 1\n  local\nend\n";
        let actual = "service a\n  cluster 2\n  local\nend\nextra\n";
        assert_eq!(
            line_diff(expected, actual),
            "    2 -   cluster 1\n    2 +   cluster 2\n    5 + extra\n"
        );
        assert_eq!(line_diff("same\n", "same\n"), "");
        assert_eq!(line_diff("gone\n", ""), "    1 - gone\n");
    }
}
