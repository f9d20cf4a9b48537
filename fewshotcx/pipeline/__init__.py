"""The data path between a volume and a backend: intensity normalisation, batched 2.5D slicing and
reassembly, support pools and their selection strategies, and 3D post-processing (all in canonical
space)."""
