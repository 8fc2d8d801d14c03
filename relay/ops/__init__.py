"""What operators see: probes, metrics, the status document, the OpenAPI document."""
