"""Model side of fusionindex: model loading, image decoding, towers and fusion; and the foundation
the other two packages share (errors, options, openmp, storage).

Pure torch/transformers/torchvision: nothing here imports Beam, faiss or the CLI.
"""
