"""Beam transforms, I/O, manifests and the `fusionindex` CLI: composes encoders and index_builder."""
