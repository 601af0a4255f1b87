"""The network of the paper: topology tables, layers, blocks, the Spatial Fusion Module, the backbone builder."""
