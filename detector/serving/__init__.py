"""gRPC scoring server: dynamic batcher, service, transport, metrics."""
