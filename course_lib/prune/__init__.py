"""Chapter 07: pruning (unstructured, SparseGPT, 2:4, structured heads and MLP channels, recovery)."""
