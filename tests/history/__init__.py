"""The recent history read back as pipelines: trees, critical paths, the doctor."""
