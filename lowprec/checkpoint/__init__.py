"""Checkpoints: the float model directory, the quantized artifact, and loading either by path."""
