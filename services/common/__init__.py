"""What the encoder and decoder services share: errors, gRPC bootstrap, config helpers, cache, telemetry."""
