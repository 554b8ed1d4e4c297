"""Generators (each kind a class behind one `load`), the detector judges, and how the world's are built and checked."""
