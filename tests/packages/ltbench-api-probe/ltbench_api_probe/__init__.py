"""An outside plugin package written against ``ltbench.api`` alone (issue 38's acceptance package)."""
