"""Tools beside the training path (never imported by it): fetching real weights, ...."""
