"""Data: the prepared-dataset format (TorchRec per-day Criteo layout), readers, generators, batching."""
