"""dist_llm_train: a testbed for coordinating LLM training when the network is the bottleneck."""

__version__ = "0.1.0"
