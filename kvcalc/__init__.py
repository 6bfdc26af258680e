"""kvcalc: exact KV-cache memory for MHA, GQA, MQA and MLA models."""

__version__ = "0.1.0"
