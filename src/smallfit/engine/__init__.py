"""Where the work runs: this process (the default) or a Ray cluster, for labelling, scoring and
serving. The same functions run in both; the Ray side only spreads them."""
