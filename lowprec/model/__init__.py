"""The float model: its config, the DLRM over `lowprec.graph`, and its trainable embedding backends.

`backends` holds the one literal registry of backends; nothing here registers anything on import.
How a trained model serves lives in `lowprec.serve`.
"""
