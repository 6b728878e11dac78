"""Tools on top of the training path: export/import, report, sweep, bench, fetching real weights.
Nothing in the training path (module, data, objectives, tasks, adapters, the fit command) imports
them."""
