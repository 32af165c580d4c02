"""Results: records on disk, metrics, summaries and comparisons, plots, and the markdown and web leaderboards."""
