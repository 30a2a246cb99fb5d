"""Records into OpenTelemetry (API only): observable instruments over the registry,
histograms aggregated on the loop, one span per connection."""
