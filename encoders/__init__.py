"""Model side of fusionindex: model loading, image decoding, towers and fusion.

Pure torch/transformers/torchvision: nothing here imports Beam, faiss or the CLI.
"""
