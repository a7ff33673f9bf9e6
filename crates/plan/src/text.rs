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
